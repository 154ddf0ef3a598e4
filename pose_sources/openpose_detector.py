"""controlnet_aux's OpenPose detector with weights from a local folder.

The weights folder holds the files of the `lllyasviel/Annotators` repository:
`body_pose_model.pth`, plus `hand_pose_model.pth` / `facenet.pth` when hands / face are
asked for. They are loaded with controlnet_aux's own `Body`, `Hand` and `Face` classes, the
ones `OpenposeDetector.from_pretrained(folder)` uses; we build the detector from them
directly because `from_pretrained` insists on all three files even when only the body is
used, and falls back to the hub for anything that is not a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .aux_import import import_quietly
from .errors import PoseSourceError
from .keypoints import BODY_POINTS, FACE_POINTS, HAND_POINTS, Person
from .pose import Pose

if TYPE_CHECKING:
    from PIL import Image

BODY_WEIGHTS = "body_pose_model.pth"
HAND_WEIGHTS = "hand_pose_model.pth"
FACE_WEIGHTS = "facenet.pth"


def check_detector_dir(folder: str | Path, *, hands: bool = False, face: bool = False) -> Path:
    """The folder, after checking it holds every weights file that will be loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseSourceError(f"{folder}: OpenPose detector folder not found")
    needed = [BODY_WEIGHTS] + [HAND_WEIGHTS] * hands + [FACE_WEIGHTS] * face
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise PoseSourceError(
            f"{folder}: OpenPose detector folder has no {', '.join(missing)}: put the weights from "
            "lllyasviel/Annotators there (body_pose_model.pth; hand_pose_model.pth for hands; facenet.pth for face)"
        )
    return folder


def load_openpose_detector(folder: str | Path, *, hands: bool = False, face: bool = False, device: str = "cpu"):
    """controlnet_aux's OpenposeDetector with weights from `folder` (never from a hub)."""
    folder = check_detector_dir(folder, hands=hands, face=face)
    open_pose = import_quietly("controlnet_aux.open_pose")
    Body, Face, Hand, OpenposeDetector = open_pose.Body, open_pose.Face, open_pose.Hand, open_pose.OpenposeDetector

    def load(cls, name):
        try:
            # torch.load inside runs with weights_only=True (torch >= 2.6): tensors, no pickled code.
            model = cls(str(folder / name))
        except Exception as exc:  # a truncated file, or weights of another network
            raise PoseSourceError(
                f"{folder / name}: cannot load OpenPose weights ({type(exc).__name__}: {exc})"
            ) from None
        try:
            model.model.to(device)
        except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. 'cuda' on a machine without it
            raise PoseSourceError(f"device {device!r}: cannot run the OpenPose detector there ({exc})") from None
        return model

    return OpenposeDetector(
        load(Body, BODY_WEIGHTS),
        load(Hand, HAND_WEIGHTS) if hands else None,
        load(Face, FACE_WEIGHTS) if face else None,
    )


def _points(keypoints: list | None, count: int, size: tuple[int, int]) -> np.ndarray | None:
    if keypoints is None:
        return None
    w, h = size
    out = np.zeros((count, 3))
    for i, kp in enumerate(keypoints[:count]):
        # The detector marks missing hand/face points with negative coordinates.
        if kp is not None and kp.x >= 0 and kp.y >= 0:
            out[i] = (kp.x * w, kp.y * h, float(getattr(kp, "score", 1.0)))
    return out


def pose_from_detection(results: list, size: tuple[int, int]) -> Pose:
    """controlnet_aux PoseResults (normalised coordinates) as a Pose on a canvas of `size`."""
    people = []
    for r in results:
        body = _points(r.body.keypoints, BODY_POINTS, size)
        people.append(
            Person(
                body,
                _points(r.left_hand, HAND_POINTS, size),
                _points(r.right_hand, HAND_POINTS, size),
                _points(r.face, FACE_POINTS, size),
            )
        )
    return Pose(tuple(people), size)


def detect_pose(
    detector: Any, frame: np.ndarray, *, hands: bool = False, face: bool = False, detect_resolution: int | None = 512
) -> Pose:
    """Detect on one RGB frame, prepared as OpenposeDetector.__call__ does; the Pose is on the frame's canvas."""
    aux_util = import_quietly("controlnet_aux.util")
    HWC3, resize_image = aux_util.HWC3, aux_util.resize_image

    frame = HWC3(np.ascontiguousarray(frame, dtype=np.uint8))
    h, w = frame.shape[:2]
    work = resize_image(frame, detect_resolution) if detect_resolution else frame
    results = detector.detect_poses(work, include_hand=hands, include_face=face)
    return pose_from_detection(results, (w, h))


class OpenPoseDetector:
    """The `PoseDetector` over controlnet_aux's OpenPose: its output unchanged (its own thresholds)."""

    kind = "openpose"

    def __init__(
        self,
        detector_dir: str | Path,
        *,
        hands: bool = False,
        face: bool = False,
        detect_resolution: int | None = 512,
        device: str = "cpu",
        model: Any = None,
    ):
        self.hands, self.face, self.detect_resolution = hands, face, detect_resolution
        # `model`: an already loaded controlnet_aux OpenposeDetector (e.g. shared between calls).
        self.model = model or load_openpose_detector(detector_dir, hands=hands, face=face, device=device)

    def detect(self, image: Image.Image | np.ndarray) -> Pose:
        frame = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        return detect_pose(
            self.model, frame, hands=self.hands, face=self.face, detect_resolution=self.detect_resolution
        )

    def close(self) -> None:
        pass
