"""The pose data types: `Person`, `Pose` (one frame) and `PoseSequence` (many frames).

Coordinates are pixels of the pose's own canvas (width, height); a point with confidence 0
is missing and is stored as (0, 0, 0) so that equality and JSON round trips are exact.
Body points follow the COCO-18 order that ControlNet OpenPose was trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import numpy as np

from .errors import PoseSourceError

if TYPE_CHECKING:
    from PIL import Image

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


@dataclass(frozen=True, eq=False)
class Pose:
    """One frame: any number of people on a canvas of `canvas` = (width, height) pixels."""

    people: tuple[Person, ...]
    canvas: Size

    def __post_init__(self) -> None:
        people = tuple(self.people)
        if not all(isinstance(p, Person) for p in people):
            raise PoseSourceError("Pose.people must hold Person objects")
        object.__setattr__(self, "people", people)
        object.__setattr__(self, "canvas", _as_size(self.canvas, "Pose.canvas"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pose):
            return NotImplemented
        return (
            self.canvas == other.canvas
            and len(self.people) == len(other.people)
            and all(a == b for a, b in zip(self.people, other.people))
        )

    __hash__ = None  # type: ignore[assignment]

    def render(self, size: Size | None = None, *, hands: bool = True, face: bool = True) -> Image.Image:
        """Draw with controlnet_aux's OpenPose drawing at `size` (default: the canvas).

        Coordinates are taken relative to the canvas, so a size with another aspect ratio
        stretches; use `fit_to(size, "letterbox")` first to keep proportions.
        """
        from .render import render_pose

        return render_pose(self, size or self.canvas, hands=hands, face=face)

    def fit_to(self, size: Size, fit: Fit = "letterbox") -> Pose:
        """The same pose on a canvas of `size`: stretched, or scaled uniformly and centred."""
        size = _as_size(size)
        if size == self.canvas:
            return self
        (w, h), (W, H) = self.canvas, size
        if fit == "stretch":
            scale = np.array([W / w, H / h])
            offset = np.zeros(2)
        elif fit == "letterbox":
            s = min(W / w, H / h)
            scale = np.array([s, s])
            offset = np.array([(W - w * s) / 2, (H - h * s) / 2])
        else:
            raise PoseSourceError(f"fit must be 'stretch' or 'letterbox', got {fit!r}")
        return Pose(tuple(p.map_points(lambda xy: xy * scale + offset) for p in self.people), size)

    def to_dict(self) -> dict:
        from .openpose_json import pose_to_dict

        return pose_to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """OpenPose JSON text (pixel coordinates + canvas size); also written to `path` if given."""
        from .openpose_json import write_pose

        return write_pose(self, path)


@dataclass(eq=False)
class PoseSequence:
    """Frames of poses sharing one canvas. `render(size)` gives one PIL image per frame."""

    poses: list[Pose]
    canvas: Size | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.poses = list(self.poses)
        if self.canvas is None:
            if not self.poses:
                raise PoseSourceError("an empty PoseSequence needs an explicit canvas")
            self.canvas = self.poses[0].canvas
        self.canvas = _as_size(self.canvas, "PoseSequence.canvas")
        for i, pose in enumerate(self.poses):
            if not isinstance(pose, Pose):
                raise PoseSourceError(f"PoseSequence frame {i} is a {type(pose).__name__}, not a Pose")
            if pose.canvas != self.canvas:
                raise PoseSourceError(
                    f"PoseSequence frame {i} has canvas {pose.canvas}, the sequence has {self.canvas}: "
                    "bring it over with pose.fit_to(canvas) first"
                )

    def __len__(self) -> int:
        return len(self.poses)

    def __iter__(self) -> Iterator[Pose]:
        return iter(self.poses)

    @overload
    def __getitem__(self, index: int) -> Pose: ...
    @overload
    def __getitem__(self, index: slice) -> PoseSequence: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return PoseSequence(self.poses[index], self.canvas)
        return self.poses[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoseSequence):
            return NotImplemented
        return (
            self.canvas == other.canvas
            and len(self) == len(other)
            and all(a == b for a, b in zip(self.poses, other.poses))
        )

    def render(self, size: Size | None = None, *, hands: bool = True, face: bool = True) -> list[Image.Image]:
        size = size or self.canvas
        return [pose.render(size, hands=hands, face=face) for pose in self.poses]

    def fit_to(self, size: Size, fit: Fit = "letterbox") -> PoseSequence:
        size = _as_size(size)
        return PoseSequence([p.fit_to(size, fit) for p in self.poses], size, dict(self.metadata))

    def to_json(self, folder: str | Path, prefix: str = "frame_") -> list[Path]:
        """Write one OpenPose JSON file per frame (`frame_000.json`, ...); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        digits = max(3, len(str(max(len(self) - 1, 0))))
        paths = []
        for i, pose in enumerate(self.poses):
            path = folder / f"{prefix}{i:0{digits}d}.json"
            pose.to_json(path)
            paths.append(path)
        return paths


def single_person(body: Sequence[Sequence[float]] | np.ndarray, canvas: Size, **parts) -> Pose:
    """Convenience: a one-person Pose from an (18, 3) body array (plus optional hands/face)."""
    return Pose((Person(np.asarray(body, dtype=np.float64), **parts),), canvas)
