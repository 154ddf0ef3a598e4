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
    if not len(sequence):
        raise PoseSourceError("cannot retarget an empty pose sequence")
    first = sequence[0]
    if person >= len(first.people):
        raise PoseSourceError(f"the first frame has {len(first.people)} people, no person {person} to retarget")
    if reference_person >= len(reference.people):
        raise PoseSourceError(f"the reference pose has {len(reference.people)} people, no person {reference_person}")

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
