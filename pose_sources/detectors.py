"""One interface for pose detection on a picture, two detectors behind it.

    detector = get_detector()                                   # bundled mediapipe, nothing to download
    detector = get_detector("openpose", detector_dir="models/Annotators")
    pose = detector.detect(pil_image)   # a Pose on the picture's canvas; no people when none found

Both give COCO-18 bodies in the picture's pixel coordinates, so anything downstream (pose
maps, retargeting, a pose-fidelity metric) does not care which one ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import PoseSourceError
from .mediapipe_detector import MediaPipeDetector
from .openpose_detector import OpenPoseDetector

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .pose import Pose

DetectorKind = Literal["mediapipe", "openpose"]
DETECTOR_KINDS: tuple[str, ...] = ("mediapipe", "openpose")


class PoseDetector(Protocol):
    kind: str

    def detect(self, image: Image.Image | np.ndarray) -> Pose:
        """The people in an RGB picture, in its pixel coordinates (canvas = the picture's size)."""
        ...

    def close(self) -> None: ...


def get_detector(
    kind: DetectorKind = "mediapipe",
    detector_dir: str | Path | None = None,
    hands: bool = False,
    face: bool = False,
    min_visibility: float = 0.5,
    *,
    detect_resolution: int | None = 512,
    device: str = "cpu",
) -> PoseDetector:
    """A ready detector.

    `"mediapipe"` (default): the bundled BlazePose landmarker, at most one person; landmarks
    with visibility below `min_visibility` are missing; `face=True` is refused (no faithful
    mapping onto OpenPose's 70 face points). `detector_dir` must be empty for it.
    `"openpose"`: controlnet_aux's OpenPose with weights from `detector_dir` (required), its
    output unchanged: `min_visibility` does not apply (OpenPose's own peak threshold decides,
    as in its drawings); `detect_resolution` and `device` are its options.
    """
    if kind == "mediapipe":
        if detector_dir is not None:
            raise PoseSourceError(
                "detector_dir is only for the 'openpose' detector (the mediapipe one is bundled): "
                "remove detector_dir, or set detector to 'openpose'"
            )
        return MediaPipeDetector(hands=hands, face=face, min_visibility=min_visibility)
    if kind == "openpose":
        if detector_dir is None:
            raise PoseSourceError(
                "detector 'openpose' needs detector_dir: a local folder with body_pose_model.pth from "
                "lllyasviel/Annotators; or use detector 'mediapipe', which needs no files"
            )
        return OpenPoseDetector(detector_dir, hands=hands, face=face, detect_resolution=detect_resolution, device=device)
    raise PoseSourceError(f"detector must be one of {', '.join(DETECTOR_KINDS)}, got {kind!r}")
