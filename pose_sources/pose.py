"""The pose containers: `Pose` (one frame) and `PoseSequence` (many frames), and their JSON form.

Coordinates are pixels of the pose's own canvas (width, height). The point layouts, sizes and
`Person` live one level down in `keypoints`, drawing in `render`; the readers (OpenPose JSON,
video, keyframes) build on this module, never the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from .errors import PoseSourceError
from .keypoints import (  # noqa: F401  (re-exported: the names users know from pose_sources.pose)
    BODY_POINTS,
    COCO18_NAMES,
    FACE_POINTS,
    HAND_POINTS,
    Fit,
    Person,
    Size,
    _as_size,
)
from .render import render_pose

if TYPE_CHECKING:
    from PIL import Image


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
        return pose_to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """OpenPose JSON text (pixel coordinates + canvas size); also written to `path` if given."""
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


def _flat(arr: np.ndarray | None) -> list[float]:
    return [] if arr is None else [float(v) for v in arr.reshape(-1)]


def pose_to_dict(pose: Pose) -> dict:
    """OpenPose JSON document: COCO-18 pixel coordinates plus the canvas size."""
    return {
        "version": 1.3,
        "people": [
            {
                "person_id": [-1],
                "pose_keypoints_2d": _flat(p.body),
                "face_keypoints_2d": _flat(p.face),
                "hand_left_keypoints_2d": _flat(p.left_hand),
                "hand_right_keypoints_2d": _flat(p.right_hand),
            }
            for p in pose.people
        ],
        "canvas_width": pose.canvas[0],
        "canvas_height": pose.canvas[1],
    }


def write_pose(pose: Pose, path: str | Path | None = None) -> str:
    # json writes floats with repr, which reads back to the same double: the round trip is exact.
    text = json.dumps(pose_to_dict(pose), allow_nan=False)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)  # atomic: a crash never leaves half a file behind
    return text
