"""Retargeting: move and scale a whole pose sequence onto a reference subject."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import PoseSourceError
from .pose import Person, Pose, PoseSequence

log = logging.getLogger(__name__)

SizeBy = Literal["bbox", "torso"]
NECK, R_HIP, L_HIP = 1, 8, 11


class PoseOutsideCanvasError(PoseSourceError):
    """Retargeted poses would leave the canvas; `.overflow` says by how much."""

    def __init__(self, message: str, overflow: Overflow):
        super().__init__(message)
        self.overflow = overflow


@dataclass(frozen=True)
class Overflow:
    """How far visible points go past each canvas edge, in pixels (worst frame per edge)."""

    left: float
    top: float
    right: float
    bottom: float
    frame: int  # the frame with the largest overflow
    canvas: tuple[int, int]

    @property
    def pixels(self) -> float:
        return max(self.left, self.top, self.right, self.bottom)

    def describe(self) -> str:
        """E.g. '24.0 px (12.0% of the width) past the right edge of the 200x160 canvas (worst in frame 2)'."""
        w, h = self.canvas
        sides = [
            f"{px:.1f} px ({px / (w if horizontal else h):.1%} of the {'width' if horizontal else 'height'}) "
            f"past the {name} edge"
            for name, px, horizontal in (
                ("left", self.left, True),
                ("top", self.top, False),
                ("right", self.right, True),
                ("bottom", self.bottom, False),
            )  # fmt: skip
            if px > 0
        ]
        return " and ".join(sides) + f" of the {w}x{h} canvas (worst in frame {self.frame})"


def _anchor_and_size(person: Person, size_by: SizeBy, what: str) -> tuple[np.ndarray, float]:
    body = person.body
    if size_by == "torso":
        hips = [body[i, :2] for i in (R_HIP, L_HIP) if body[i, 2] > 0]
        if body[NECK, 2] <= 0 or not hips:
            raise PoseSourceError(f"{what}: size_by='torso' needs the neck and a hip; use size_by='bbox'")
        neck = body[NECK, :2]
        size = float(np.linalg.norm(np.mean(hips, axis=0) - neck))
        anchor = neck
    elif size_by == "bbox":
        pts = person.visible_points(body_only=True)
        if len(pts) < 2:
            raise PoseSourceError(f"{what}: needs at least two visible body points to measure its size")
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        anchor = (lo + hi) / 2
        # Height is the stable measure for a standing subject; width only for a flat one.
        size = float(hi[1] - lo[1]) or float(hi[0] - lo[0])
    else:
        raise PoseSourceError(f"size_by must be 'bbox' or 'torso', got {size_by!r}")
    if size <= 1e-9:
        raise PoseSourceError(f"{what}: all its points coincide, its size cannot be measured")
    return anchor, size


def measure_overflow(sequence: PoseSequence) -> Overflow:
    """Per edge, the largest distance any visible point of any frame lies outside the canvas."""
    w, h = sequence.canvas
    worst = np.zeros(4)  # left, top, right, bottom
    worst_frame, worst_px = 0, 0.0
    for i, pose in enumerate(sequence):
        pts = [p.visible_points() for p in pose.people]
        pts = np.concatenate(pts) if pts else np.zeros((0, 2))
        if not len(pts):
            continue
        over = np.maximum(0.0, [-pts[:, 0].min(), -pts[:, 1].min(), pts[:, 0].max() - w, pts[:, 1].max() - h])
        worst = np.maximum(worst, over)
        if over.max() > worst_px:
            worst_frame, worst_px = i, float(over.max())
    return Overflow(*(float(v) for v in worst), frame=worst_frame, canvas=(w, h))


def _check_people(sequence: PoseSequence, reference: Pose, person: int, reference_person: int) -> Pose:
    """The sequence's first frame, once both people to retarget are known to exist."""
    if not len(sequence):
        raise PoseSourceError("cannot retarget an empty pose sequence")
    first = sequence[0]
    if person >= len(first.people):
        raise PoseSourceError(f"the first frame has {len(first.people)} people, no person {person} to retarget")
    if reference_person >= len(reference.people):
        raise PoseSourceError(f"the reference pose has {len(reference.people)} people, no person {reference_person}")
    return first


def retarget(
    sequence: PoseSequence,
    reference: Pose,
    *,
    size_by: SizeBy = "bbox",
    person: int = 0,
    reference_person: int = 0,
    allow_outside: bool = False,
) -> PoseSequence:
    """Scale and translate the whole sequence so its first pose matches `reference`.

    One uniform scale and one translation, computed from the first frame, are applied to
    every frame, so the motion (relative moves, proportions) is kept. The match:
    `size_by="bbox"`: centre and height of the bounding box of visible body points;
    `size_by="torso"`: the neck lands on the reference's neck and the neck-to-mid-hip
    length matches. The result lies on the reference's canvas.

    If any frame then leaves the canvas, this raises `PoseOutsideCanvasError` saying by how
    many pixels (and what fraction of the canvas) on which edge; with `allow_outside=True`
    it logs that as a warning instead. Either way `metadata["retarget"]` records the
    scale, offset and overflow in pixels.
    """
    first = _check_people(sequence, reference, person, reference_person)

    src_anchor, src_size = _anchor_and_size(first.people[person], size_by, "the first frame's person")
    ref_anchor, ref_size = _anchor_and_size(reference.people[reference_person], size_by, "the reference person")
    scale = ref_size / src_size
    offset = ref_anchor - src_anchor * scale

    def move(xy: np.ndarray) -> np.ndarray:
        return xy * scale + offset

    result = PoseSequence(
        [Pose(tuple(p.map_points(move) for p in pose.people), reference.canvas) for pose in sequence],
        reference.canvas,
        dict(sequence.metadata),
    )
    overflow = measure_overflow(result)
    result.metadata["retarget"] = {
        "scale": scale,
        "offset": [float(v) for v in offset],
        "size_by": size_by,
        "outside_px": overflow.pixels,
    }
    if overflow.pixels > 0:
        message = f"retargeted poses go {overflow.describe()}"
        if not allow_outside:
            raise PoseOutsideCanvasError(
                message + ": pick a smaller reference, or pass allow_outside=True to accept it", overflow
            )
        log.warning("%s", message)
    return result


# COCO-18 bones as (parent, child), every parent listed before its children: a tree rooted at
# the neck (controlnet_aux's limbSeq, 0-based). Each point but the neck is the child of one bone.
BONES: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (1, 8), (1, 11), (1, 0),
    (2, 3), (3, 4), (5, 6), (6, 7),
    (8, 9), (9, 10), (11, 12), (12, 13),
    (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
R_WRIST, L_WRIST, NOSE = 4, 7, 0
MIN_SHARED_BONES = 4


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _angle(v: np.ndarray) -> float:
    return float(np.arctan2(v[1], v[0]))


def retarget_to_subject(
    sequence: PoseSequence,
    reference: Pose,
    *,
    person: int = 0,
    reference_person: int = 0,
    min_shared_bones: int = MIN_SHARED_BONES,
) -> PoseSequence:
    """Move the motion onto the subject of `reference`: frame 0 lands on it, later frames move from there.

    1. Position and scale: the first frame's neck goes onto the reference's neck; the scale is
       the median length ratio of the bones both skeletons show (so one foreshortened limb does
       not decide it). Without a neck or a shared bone, `retarget(size_by="bbox")` does it.
    2. Limbs, when both skeletons share at least `min_shared_bones` bones: every shared bone
       gets the reference's length and, in the first frame, its direction; in later frames it
       turns by the angle the sequence's bone turns from its first frame. Walking the bones out
       from the neck, the first frame then coincides with the reference at every point both
       show (linked to the neck by shared bones); bones the reference lacks (e.g. legs outside
       a portrait) keep the sequence's shape at the common scale, and points the sequence
       lacks stay missing. Hands follow their wrists, the face the nose.

    Points may end outside the canvas (a full-body motion on a half-body photo): they are not
    drawn; the overflow is logged and recorded in `metadata["retarget"]`.
    """
    first = _check_people(sequence, reference, person, reference_person)
    src, ref = first.people[person].body, reference.people[reference_person].body

    def seen(body: np.ndarray, *points: int) -> bool:
        return all(body[i, 2] > 0 for i in points)

    shared = [
        (a, b)
        for a, b in BONES
        if seen(src, a, b) and seen(ref, a, b) and np.linalg.norm(src[b, :2] - src[a, :2]) > 1e-6
    ]
    if not seen(src, NECK) or not seen(ref, NECK) or not shared:
        result = retarget(sequence, reference, size_by="bbox", person=person,
                          reference_person=reference_person, allow_outside=True)  # fmt: skip
        result.metadata["retarget"].update({"mode": "bbox", "shared_bones": len(shared)})
        return result

    src_len = {b: float(np.linalg.norm(src[b, :2] - src[a, :2])) for a, b in shared}
    ref_len = {b: float(np.linalg.norm(ref[b, :2] - ref[a, :2])) for a, b in shared}
    scale = float(np.median([ref_len[b] / src_len[b] for b in src_len]))
    offset = ref[NECK, :2] - src[NECK, :2] * scale
    bones_mode = len(shared) >= min_shared_bones
    turn = {}  # child point -> (rotation, length factor) applied to its bone in every frame
    if bones_mode:
        for a, b in shared:
            angle = _angle(ref[b, :2] - ref[a, :2]) - _angle(src[b, :2] - src[a, :2])
            turn[b] = (_rotation(angle), ref_len[b] / (scale * src_len[b]))

    def move(xy: np.ndarray) -> np.ndarray:
        return xy * scale + offset

    def rebuild(p: Person) -> Person:
        moved = p.map_points(move)
        if not turn:
            return moved
        old, new = moved.body, moved.body.copy()
        for a, b in BONES:
            if old[b, 2] <= 0 or old[a, 2] <= 0:
                continue  # without its parent a point stays where the common scale put it
            vec = old[b, :2] - old[a, :2]
            if b in turn:
                rot, factor = turn[b]
                vec = rot @ vec * factor
            new[b, :2] = new[a, :2] + vec

        def follow(part: np.ndarray | None, anchor: int) -> np.ndarray | None:
            if part is None or old[anchor, 2] <= 0:
                return part
            out = part.copy()
            vis = out[:, 2] > 0
            out[vis, :2] += new[anchor, :2] - old[anchor, :2]
            return out

        return Person(new, follow(moved.left_hand, L_WRIST), follow(moved.right_hand, R_WRIST), follow(moved.face, NOSE))

    poses = []
    for pose in sequence:
        people = tuple(rebuild(p) if i == person else p.map_points(move) for i, p in enumerate(pose.people))
        poses.append(Pose(people, reference.canvas))
    result = PoseSequence(poses, reference.canvas, dict(sequence.metadata))
    overflow = measure_overflow(result)
    result.metadata["retarget"] = {
        "mode": "bones" if bones_mode else "neck",
        "scale": scale,
        "offset": [float(v) for v in offset],
        "shared_bones": len(shared),
        "outside_px": overflow.pixels,
    }
    if overflow.pixels > 0:
        log.info("retargeted poses go %s (not drawn there)", overflow.describe())
    return result
