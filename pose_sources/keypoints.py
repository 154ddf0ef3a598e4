"""The lowest layer of pose_sources: keypoint layouts, sizes and `Person`.

Everything else (drawing, the `Pose`/`PoseSequence` containers, the readers) builds on this
module, and it imports nothing of pose_sources but the error type, so the layers form a line:
keypoints <- render <- pose <- readers.

A point with confidence 0 is missing and is stored as (0, 0, 0) so that equality and JSON
round trips are exact. Body points follow the COCO-18 order ControlNet OpenPose was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from .errors import PoseSourceError

COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
BODY_POINTS = 18
HAND_POINTS = 21
FACE_POINTS = 70

Size = tuple[int, int]  # (width, height), PIL's order
Fit = Literal["stretch", "letterbox"]


def _as_points(values: object, count: int, what: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.shape == (count * 3,):
        arr = arr.reshape(count, 3)
    if arr.shape != (count, 3):
        raise PoseSourceError(f"{what}: expected {count} points of (x, y, confidence), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PoseSourceError(f"{what}: contains NaN or infinite values")
    # A missing point carries no position; zeroing it keeps equality and JSON output exact.
    arr[arr[:, 2] <= 0] = 0.0
    arr.setflags(write=False)
    return arr


def _as_size(size: Iterable[int], what: str = "size") -> Size:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise PoseSourceError(f"{what} must be (width, height), got {size!r}") from None
    if w <= 0 or h <= 0:
        raise PoseSourceError(f"{what} must be positive (width, height), got {(w, h)}")
    return w, h


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


@dataclass(frozen=True, eq=False)
class Person:
    """One person: 18 body points, optional 21-point hands and 70-point face, each (x, y, c)."""

    body: np.ndarray
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", _as_points(self.body, BODY_POINTS, "body"))
        for name, count in (("left_hand", HAND_POINTS), ("right_hand", HAND_POINTS), ("face", FACE_POINTS)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _as_points(value, count, name))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Person):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in ("body", "left_hand", "right_hand", "face"))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable

    def parts(self) -> Iterator[np.ndarray]:
        """Every point array this person has (body first)."""
        for arr in (self.body, self.left_hand, self.right_hand, self.face):
            if arr is not None:
                yield arr

    def visible_points(self, body_only: bool = False) -> np.ndarray:
        """(N, 2) pixel positions of all points with confidence > 0."""
        arrays = [self.body] if body_only else list(self.parts())
        pts = np.concatenate(arrays)
        return pts[pts[:, 2] > 0, :2]

    def map_points(self, fn) -> Person:
        """A copy with `fn(xy) -> xy` applied to the visible points of every part."""

        def apply(arr: np.ndarray | None) -> np.ndarray | None:
            if arr is None:
                return None
            out = arr.copy()
            vis = out[:, 2] > 0
            out[vis, :2] = fn(out[vis, :2])
            return out

        return Person(apply(self.body), apply(self.left_hand), apply(self.right_hand), apply(self.face))


class PoseLike(Protocol):
    """What drawing needs of a pose: its people and the canvas their pixels refer to."""

    @property
    def people(self) -> tuple[Person, ...]: ...

    @property
    def canvas(self) -> Size: ...
