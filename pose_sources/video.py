"""Driving video (or one picture) -> poses, through a `PoseDetector`.

The detector is the bundled mediapipe one unless asked otherwise (`detector="openpose"` with
a weights folder, see `openpose_detector`). The OpenPose names that used to live here
(`load_openpose_detector`, `check_detector_dir`, `pose_from_detection`, ...) are re-exported.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .detectors import DetectorKind, PoseDetector, get_detector
from .errors import PoseSourceError
from .openpose_detector import (  # noqa: F401  (re-exported)
    BODY_WEIGHTS,
    FACE_WEIGHTS,
    HAND_WEIGHTS,
    OpenPoseDetector,
    check_detector_dir,
    detect_pose,
    load_openpose_detector,
    pose_from_detection,
)
from .pose import Pose, PoseSequence

if TYPE_CHECKING:
    from PIL import Image


def read_video_frames(path: str | Path, *, every_nth: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames 0, n, 2n, ... (at most `max_frames`), decoded with imageio's ffmpeg."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise PoseSourceError(f"{path}: video file not found")
    if every_nth < 1:
        raise PoseSourceError(f"every_nth must be at least 1, got {every_nth}")
    if max_frames is not None and max_frames < 1:
        raise PoseSourceError(f"max_frames must be at least 1 (or None for all), got {max_frames}")
    kept = 0
    try:
        for i, frame in enumerate(iio.imiter(path, plugin="FFMPEG")):
            if i % every_nth:
                continue
            yield np.asarray(frame)
            kept += 1
            if max_frames is not None and kept >= max_frames:
                return
    except PoseSourceError:
        raise
    except Exception as exc:  # imageio/ffmpeg raise OSError, RuntimeError, IndexError... on bad input
        raise PoseSourceError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from None
    if kept == 0:
        raise PoseSourceError(f"{path}: video has no frames to read")


def _detector(
    detector: DetectorKind | PoseDetector | Any | None,
    detector_dir: str | Path | None,
    *,
    hands: bool,
    face: bool,
    min_visibility: float,
    detect_resolution: int | None,
    device: str,
) -> PoseDetector:
    """A detector from a kind name, a ready PoseDetector, or a loaded controlnet_aux OpenposeDetector.

    No kind given: OpenPose when a weights folder is given (what these functions always did
    with one), else the bundled mediapipe detector.
    """
    if detector is None or isinstance(detector, str):
        kind = detector or ("openpose" if detector_dir is not None else "mediapipe")
        return get_detector(
            kind, detector_dir, hands=hands, face=face, min_visibility=min_visibility,
            detect_resolution=detect_resolution, device=device,
        )  # fmt: skip
    if hasattr(detector, "detect"):
        return detector
    if hasattr(detector, "detect_poses"):  # controlnet_aux's own OpenposeDetector
        return OpenPoseDetector(None, hands=hands, face=face, detect_resolution=detect_resolution, model=detector)
    raise PoseSourceError(f"detector must be 'mediapipe', 'openpose' or a detector object, got {type(detector).__name__}")


def detect_video_poses(
    path: str | Path,
    detector_dir: str | Path | None = None,
    *,
    every_nth: int = 1,
    max_frames: int | None = None,
    hands: bool = False,
    face: bool = False,
    min_visibility: float = 0.5,
    detect_resolution: int | None = 512,
    device: str = "cpu",
    detector: DetectorKind | PoseDetector | Any | None = None,
) -> PoseSequence:
    """One Pose per kept video frame (every `every_nth`, at most `max_frames`), on the video's canvas.

    A frame where nobody is found gives a Pose with no people (an empty pose map), so frame
    numbers stay aligned with the video.
    """
    frames = read_video_frames(path, every_nth=every_nth, max_frames=max_frames)
    first = next(frames)  # decode errors surface before the (slow) detector loads
    det = _detector(
        detector, detector_dir, hands=hands, face=face, min_visibility=min_visibility,
        detect_resolution=detect_resolution, device=device,
    )  # fmt: skip
    poses = [det.detect(frame) for frame in itertools.chain([first], frames)]
    seq = PoseSequence(poses)
    seq.metadata.update({"video": str(path), "every_nth": every_nth, "detector": det.kind})
    return seq


def detect_image_pose(
    image: Image.Image | np.ndarray,
    detector_dir: str | Path | None = None,
    *,
    hands: bool = False,
    face: bool = False,
    min_visibility: float = 0.5,
    detect_resolution: int | None = 512,
    device: str = "cpu",
    detector: DetectorKind | PoseDetector | Any | None = None,
) -> Pose:
    """The pose in one picture (e.g. the source image, as a `retarget` reference)."""
    det = _detector(
        detector, detector_dir, hands=hands, face=face, min_visibility=min_visibility,
        detect_resolution=detect_resolution, device=device,
    )  # fmt: skip
    return det.detect(image)
