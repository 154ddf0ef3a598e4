"""Reading and writing OpenPose JSON (the per-frame files of OpenPose, DWPose and pose editors).

Accepted per person: `pose_keypoints_2d` as COCO-18 (54 numbers) or BODY_25 (75 numbers,
mapped onto COCO-18), optional `hand_left_keypoints_2d` / `hand_right_keypoints_2d` (63) and
`face_keypoints_2d` (210 = 70 points, or DWPose's 204 = 68 points without pupils).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import PoseSourceError
from .paths import files_with_suffix
from .keypoints import FACE_POINTS, HAND_POINTS, Fit, Person, Size, _as_size
from .pose import Pose, PoseSequence, pose_to_dict, write_pose  # noqa: F401  (the writers are part of this API)

Coordinates = Literal["auto", "pixel", "normalized"]

# BODY_25 puts MidHip at 8 and feet at 19-24; COCO-18 has neither.
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
BODY_LAYOUTS = {18 * 3: "COCO-18", 25 * 3: "BODY_25"}
FACE_LENGTHS = {FACE_POINTS * 3, 68 * 3}


MAX_COORDINATE = 1e6
"""Largest |value| accepted in a keypoint list: far beyond any canvas, far below int32 overflow."""


def _numbers(values: object, where: str) -> np.ndarray:
    if values is None:
        return np.zeros((0,), dtype=np.float64)
    if not isinstance(values, list):
        raise PoseSourceError(
            f"{where} must be a flat list of numbers [x, y, confidence, ...], got {type(values).__name__}"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise PoseSourceError(f"{where} must hold only numbers [x, y, confidence, ...]")
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise PoseSourceError(f"{where} contains NaN or infinite values")
    biggest = float(np.abs(arr).max(initial=0.0))
    if biggest > MAX_COORDINATE:
        # The drawing code works in 32-bit ints: such values end in an OverflowError deep in OpenCV.
        raise PoseSourceError(f"{where} holds the value {biggest:g}, beyond +-{MAX_COORDINATE:g}; pose coordinates "
                              "are pixels of the canvas (or 0..1 when normalized): check the file")
    return arr


def _body(values: object, where: str) -> np.ndarray:
    arr = _numbers(values, where)
    layout = BODY_LAYOUTS.get(arr.size)
    if layout is None:
        raise PoseSourceError(
            f"{where} has {arr.size} numbers, which fits no layout: expected 54 (COCO-18, 18 points x "
            "[x, y, confidence]) or 75 (BODY_25, 25 points x 3)"
        )
    arr = arr.reshape(-1, 3)
    return arr[list(BODY25_TO_COCO18)] if layout == "BODY_25" else arr


def _part(values: object, where: str, lengths: set[int], points: int) -> np.ndarray | None:
    arr = _numbers(values, where)
    if arr.size == 0:
        return None  # OpenPose writes [] for parts it did not compute
    if arr.size not in lengths:
        allowed = " or ".join(str(n) for n in sorted(lengths, reverse=True))
        raise PoseSourceError(f"{where} has {arr.size} numbers, expected {allowed} ([x, y, confidence] per point)")
    arr = arr.reshape(-1, 3)
    if len(arr) < points:  # 68-point face: the two pupils are simply missing
        arr = np.concatenate([arr, np.zeros((points - len(arr), 3))])
    return arr


def _canvas_in(doc: dict, source: str) -> Size | None:
    w, h = doc.get("canvas_width"), doc.get("canvas_height")
    if w is None and h is None:
        return None
    try:
        return _as_size((w, h))
    except PoseSourceError:
        raise PoseSourceError(
            f"{source}: canvas_width/canvas_height must both be positive integers, got {w!r} x {h!r}"
        ) from None


def parse_openpose(
    doc: object,
    *,
    source: str = "<OpenPose JSON>",
    coordinates: Coordinates = "auto",
    source_size: Size | None = None,
    default_canvas: Size = (512, 512),
    hands: bool = True,
    face: bool = True,
    min_confidence: float = 0.0,
) -> Pose:
    """One OpenPose document (already `json.load`ed) as a Pose in pixels of its canvas.

    Canvas: the file's `canvas_width`/`canvas_height` if present, else `source_size`; for
    normalised coordinates without either, `default_canvas`. `coordinates="auto"` takes the
    file as normalised when every visible coordinate lies within [0, 1].
    Points with confidence <= 0 or below `min_confidence` are missing.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("people"), list):
        raise PoseSourceError(f"{source}: expected a JSON object with a 'people' list (OpenPose format)")
    if coordinates not in ("auto", "pixel", "normalized"):
        raise PoseSourceError(f"coordinates must be 'auto', 'pixel' or 'normalized', got {coordinates!r}")

    raw_people = []
    for i, person in enumerate(doc["people"]):
        where = f"{source}: people[{i}]"
        if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
            raise PoseSourceError(f"{where} has no 'pose_keypoints_2d'")
        parts = {"body": _body(person["pose_keypoints_2d"], f"{where}.pose_keypoints_2d")}
        if hands:
            for side in ("left", "right"):
                key = f"hand_{side}_keypoints_2d"
                parts[f"{side}_hand"] = _part(person.get(key), f"{where}.{key}", {HAND_POINTS * 3}, HAND_POINTS)
        if face:
            parts["face"] = _part(
                person.get("face_keypoints_2d"), f"{where}.face_keypoints_2d", FACE_LENGTHS, FACE_POINTS
            )
        for arr in parts.values():
            if arr is not None:
                arr[(arr[:, 2] <= 0) | (arr[:, 2] < min_confidence)] = 0.0
        raw_people.append(parts)

    visible = [arr[arr[:, 2] > 0, :2] for p in raw_people for arr in p.values() if arr is not None]
    visible = np.concatenate(visible) if visible else np.zeros((0, 2))
    mode = coordinates
    if mode == "auto":
        mode = "normalized" if visible.size and visible.min() >= 0 and visible.max() <= 1 else "pixel"

    canvas = _canvas_in(doc, source) or (_as_size(source_size, "source_size") if source_size else None)
    if mode == "normalized":
        canvas = canvas or _as_size(default_canvas, "default_canvas")
        scale = np.array(canvas, dtype=np.float64)
    else:
        if canvas is None:
            if visible.size:
                raise PoseSourceError(
                    f"{source}: pixel coordinates but no canvas_width/canvas_height in the file: give the size "
                    "of the image the poses were taken from (source_width/source_height), or use normalised coordinates"
                )
            canvas = _as_size(default_canvas, "default_canvas")
        scale = np.ones(2)

    people = []
    for parts in raw_people:
        for arr in parts.values():
            if arr is not None:
                arr[:, :2] *= scale
        people.append(Person(**parts))
    return Pose(tuple(people), canvas)


def read_openpose_json(path: str | Path, **options) -> Pose:
    """One OpenPose JSON file as a Pose; options as for `parse_openpose`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PoseSourceError(f"{path}: OpenPose JSON file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoseSourceError(f"{path}: cannot read OpenPose JSON ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoseSourceError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    return parse_openpose(doc, source=str(path), **options)


def list_openpose_files(path: str | Path) -> list[Path]:
    """A single .json file, or the .json files of a folder in natural order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PoseSourceError(f"{path}: no such OpenPose JSON file or folder")
    files = files_with_suffix(path, {".json"})
    if not files:
        raise PoseSourceError(f"{path}: folder holds no .json files (expected one OpenPose JSON file per frame)")
    return files


def read_openpose_folder(
    path: str | Path | Sequence[str | Path],
    *,
    canvas: Size | None = None,
    fit: Fit = "letterbox",
    **options,
) -> PoseSequence:
    """A folder (natural order), a single file or a list of files as a PoseSequence.

    Frames whose canvas differs from `canvas` (default: the first frame's) are brought onto
    it with `fit`.
    """
    files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else list_openpose_files(path)
    if not files:
        raise PoseSourceError("no OpenPose JSON files given")
    poses = [read_openpose_json(f, **options) for f in files]
    target = _as_size(canvas) if canvas else poses[0].canvas
    seq = PoseSequence([p.fit_to(target, fit) for p in poses], target)
    seq.metadata["files"] = [str(f) for f in files]
    return seq


__all__ = [
    "BODY25_TO_COCO18",
    "Coordinates",
    "list_openpose_files",
    "parse_openpose",
    "pose_to_dict",
    "read_openpose_folder",
    "read_openpose_json",
    "write_pose",
]
