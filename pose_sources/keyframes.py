"""Keyframe interpolation: a few poses in, one pose per frame out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .errors import PoseSourceError
from .pose import Person, Pose, PoseSequence

Easing = Literal["linear", "ease_in_out"]


def ease(t: float, easing: Easing = "linear") -> float:
    if easing == "linear":
        return t
    if easing == "ease_in_out":
        # Cosine ease: zero velocity at both keyframes, and still 0.5 at the midpoint.
        return 0.5 - 0.5 * math.cos(math.pi * t)
    raise PoseSourceError(f"easing must be 'linear' or 'ease_in_out', got {easing!r}")


def _lerp_part(a: np.ndarray | None, b: np.ndarray | None, t: float) -> np.ndarray | None:
    if a is None or b is None:
        return None
    out = (1.0 - t) * a + t * b
    # A point missing at either end has no path to follow: keep it missing rather than
    # letting it slide in from (0, 0).
    out[(a[:, 2] <= 0) | (b[:, 2] <= 0)] = 0.0
    return out


def interpolate_pose(a: Pose, b: Pose, t: float) -> Pose:
    """The pose a fraction `t` of the way from `a` to `b` (people matched by index)."""
    if a.canvas != b.canvas:
        raise PoseSourceError(f"keyframes have different canvases {a.canvas} and {b.canvas}: fit them to one first")
    if t == 0:
        return a
    if t == 1:
        return b
    people = []
    for pa, pb in zip(a.people, b.people):  # a person present at only one end is absent in between
        person = Person(
            _lerp_part(pa.body, pb.body, t),
            _lerp_part(pa.left_hand, pb.left_hand, t),
            _lerp_part(pa.right_hand, pb.right_hand, t),
            _lerp_part(pa.face, pb.face, t),
        )
        if any((arr[:, 2] > 0).any() for arr in person.parts()):
            people.append(person)
    return Pose(tuple(people), a.canvas)


def keyframe_positions(count: int, frames: int, at: Sequence[int] | None, loop: bool) -> list[int]:
    """Frame index of each keyframe: `at` checked, or spread evenly over the frames."""
    if frames < 1:
        raise PoseSourceError(f"frames must be at least 1, got {frames}: give the number of frames to produce")
    if count < 1:
        raise PoseSourceError("no keyframes given: give at least one pose")
    if at is not None:
        at = [int(i) for i in at]
        if len(at) != count:
            raise PoseSourceError(
                f"'at' has {len(at)} frame indices for {count} keyframes: give one index per keyframe"
            )
        if any(i < 0 or i >= frames for i in at):
            raise PoseSourceError(f"'at' indices {at} must lie within 0..{frames - 1} (frames={frames})")
        if any(j <= i for i, j in zip(at, at[1:])):
            raise PoseSourceError(f"'at' indices {at} must be strictly increasing")
        return at
    if count > frames:
        raise PoseSourceError(
            f"{count} keyframes do not fit in {frames} frames: give at least {count} frames or place them with 'at'"
        )
    if count == 1:
        return [0]
    if loop:  # the first keyframe comes back at index `frames`, one past the end
        return [round(k * frames / count) for k in range(count)]
    return [round(k * (frames - 1) / (count - 1)) for k in range(count)]


def interpolate_keyframes(
    keyframes: Sequence[Pose],
    frames: int,
    *,
    at: Sequence[int] | None = None,
    easing: Easing = "linear",
    loop: bool = False,
) -> PoseSequence:
    """`frames` poses through the keyframes, which land exactly on their frame indices.

    Without `loop`, frames before the first keyframe hold it, likewise after the last.
    With `loop`, the last keyframe moves on to the first again (for cycles like a walk).
    """
    keyframes = list(keyframes)
    positions = keyframe_positions(len(keyframes), frames, at, loop)
    canvas = keyframes[0].canvas
    for i, k in enumerate(keyframes):
        if k.canvas != canvas:
            raise PoseSourceError(f"keyframe {i} has canvas {k.canvas}, keyframe 0 has {canvas}: fit them to one first")
    ease(0.0, easing)  # reject a bad easing name even when no frame needs easing

    anchors = list(zip(positions, keyframes))
    if loop and len(keyframes) > 1:
        anchors = [(positions[-1] - frames, keyframes[-1]), *anchors, (positions[0] + frames, keyframes[0])]

    poses = []
    for i in range(frames):
        if i <= anchors[0][0]:
            poses.append(anchors[0][1])
            continue
        if i >= anchors[-1][0]:
            poses.append(anchors[-1][1])
            continue
        for (p0, k0), (p1, k1) in zip(anchors, anchors[1:]):
            if p0 <= i < p1:
                poses.append(k0 if i == p0 else interpolate_pose(k0, k1, ease((i - p0) / (p1 - p0), easing)))
                break
    seq = PoseSequence(poses, canvas)
    seq.metadata["keyframe_positions"] = positions
    return seq
