"""The bundled pose detector: mediapipe's BlazePose landmarker, mapped onto OpenPose COCO-18.

mediapipe 0.10.x wheels carry the models (`pose_landmark_full.tflite`, hand and face
landmark models), so nothing is downloaded. BlazePose finds at most one person per image.

Mapping (by landmark name, see `BLAZEPOSE_TO_COCO18`): nose, eyes, ears, shoulders, elbows,
wrists, hips, knees and ankles map one to one; OpenPose's neck has no BlazePose landmark and
is the midpoint of the shoulders, only when both shoulders are kept. A landmark whose
visibility is below `min_visibility`, or that lies outside the picture, is missing
(confidence 0, as OpenPose JSON writes it). Kept points carry their visibility as confidence.

Hands: mediapipe's holistic graph finds each hand from the pose's wrist, so its left/right
are the person's (like OpenPose's); its 21 hand landmarks are in OpenPose's hand order
(wrist, then thumb, index, middle, ring, pinky from base to tip).

Face: refused. OpenPose's 70 face points are the 68-point iBUG layout plus pupils; its jaw
line (points 0-16) follows the outline of the face as seen, while mediapipe's 468 mesh
vertices sit at fixed places on the face surface, so only a handful of points (eye and mouth
corners, nose tip) have a faithful counterpart. Drawing a made-up jaw line would teach
ControlNet a face shape the picture does not have.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .errors import PoseSourceError
from .keypoints import BODY_POINTS, COCO18_NAMES, HAND_POINTS, Person, Size
from .pose import Pose

if TYPE_CHECKING:
    from PIL import Image

# BlazePose's 33 landmarks in index order (mediapipe.solutions.pose.PoseLandmark, lower case).
BLAZEPOSE_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye_inner", "left_eye", "left_eye_outer",
    "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_pinky", "right_pinky",
    "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip
BLAZEPOSE_POINTS = len(BLAZEPOSE_NAMES)

# COCO-18 name -> BlazePose name. "neck" is absent on purpose: it is derived from the shoulders.
BLAZEPOSE_TO_COCO18: dict[str, str] = {
    "nose": "nose",
    "r_shoulder": "right_shoulder", "r_elbow": "right_elbow", "r_wrist": "right_wrist",
    "l_shoulder": "left_shoulder", "l_elbow": "left_elbow", "l_wrist": "left_wrist",
    "r_hip": "right_hip", "r_knee": "right_knee", "r_ankle": "right_ankle",
    "l_hip": "left_hip", "l_knee": "left_knee", "l_ankle": "left_ankle",
    "r_eye": "right_eye", "l_eye": "left_eye", "r_ear": "right_ear", "l_ear": "left_ear",
}  # fmt: skip

FACE_REFUSED = (
    "face: the bundled mediapipe detector cannot give OpenPose's 70-point face faithfully (its face "
    "mesh has no counterpart for OpenPose's jaw-line outline points); set face to false, or use "
    "detector 'openpose' with facenet.pth in detector_dir"
)


# Set to 1 to let mediapipe's C++ log lines through (a caller that wants to see everything sets it).
VERBOSE_ENV = "MASACTRL_VERBOSE"

_native_lock = threading.Lock()
_native_depth = 0  # nested/concurrent quiet sections share one redirection
_native_saved_fd: int | None = None


def verbose_from_env() -> bool:
    """Whether $MASACTRL_VERBOSE asks for third-party log lines."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def quiet_native_stderr(enabled: bool | None = None) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null while the block runs.

    mediapipe's C++ (absl, TFLite) logs "INFO: Created TensorFlow Lite XNNPACK delegate",
    "WARNING: All log messages before absl::InitializeLog() ..." and one "W0000 ... Feedback
    manager ..." line per model straight to fd 2 when the graph opens its models; neither GLOG_* nor
    TF_CPP_* variables reach them, and ``sys.stderr`` is not involved, so only the descriptor
    can be silenced. Python text written by other threads meanwhile is lost too, which is why the
    detector uses this only while it starts (and closes), not per picture. ``enabled`` None: quiet
    unless $MASACTRL_VERBOSE is set.
    """
    global _native_depth, _native_saved_fd
    if enabled is None:
        enabled = not verbose_from_env()
    if not enabled:
        yield
        return
    with _native_lock:
        if _native_depth == 0:
            try:
                sys.stderr.flush()  # what Python wrote before stays on the terminal
            except (AttributeError, OSError, ValueError):
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all: nothing to silence
                saved = None
            if saved is not None:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            _native_saved_fd = saved
        _native_depth += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_depth -= 1
            if _native_depth == 0 and _native_saved_fd is not None:
                os.dup2(_native_saved_fd, 2)
                os.close(_native_saved_fd)
                _native_saved_fd = None


def _keep(points: np.ndarray, canvas: Size) -> np.ndarray:
    """Boolean mask of (N, 2) pixel points lying inside the picture."""
    w, h = canvas
    return (points[:, 0] >= 0) & (points[:, 0] <= w) & (points[:, 1] >= 0) & (points[:, 1] <= h)


def blazepose_to_coco18(landmarks: np.ndarray, canvas: Size, min_visibility: float = 0.5) -> np.ndarray:
    """(33, 3) BlazePose landmarks as (x px, y px, visibility) -> (18, 3) COCO-18 body (x, y, confidence).

    Missing (confidence 0, stored as zeros): landmarks with visibility below `min_visibility`
    or outside the canvas; the neck unless both shoulders are kept.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (BLAZEPOSE_POINTS, 3):
        raise PoseSourceError(f"BlazePose landmarks: expected shape (33, 3) of (x, y, visibility), got {landmarks.shape}")
    kept = (landmarks[:, 2] >= min_visibility) & (landmarks[:, 2] > 0) & _keep(landmarks[:, :2], canvas)
    body = np.zeros((BODY_POINTS, 3))
    for coco_index, coco_name in enumerate(COCO18_NAMES):
        if coco_name == "neck":
            continue
        i = BLAZEPOSE_NAMES.index(BLAZEPOSE_TO_COCO18[coco_name])
        if kept[i]:
            body[coco_index] = landmarks[i]
    r, l = BLAZEPOSE_NAMES.index("right_shoulder"), BLAZEPOSE_NAMES.index("left_shoulder")
    if kept[r] and kept[l]:
        neck = COCO18_NAMES.index("neck")
        body[neck, :2] = (landmarks[r, :2] + landmarks[l, :2]) / 2
        body[neck, 2] = min(landmarks[r, 2], landmarks[l, 2])
    return body


def _pixels(landmark_list, canvas: Size, visibility: bool) -> np.ndarray:
    w, h = canvas
    return np.array(
        [(lm.x * w, lm.y * h, lm.visibility if visibility else 1.0) for lm in landmark_list.landmark], dtype=np.float64
    )


def _hand(landmark_list, canvas: Size) -> np.ndarray | None:
    if landmark_list is None:
        return None
    pts = _pixels(landmark_list, canvas, visibility=False)  # hand landmarks carry no visibility
    if pts.shape != (HAND_POINTS, 3):
        return None
    pts[~_keep(pts[:, :2], canvas)] = 0.0
    return pts


class MediaPipeDetector:
    """The bundled `PoseDetector`: one person or none per picture, in the picture's pixels."""

    kind = "mediapipe"

    def __init__(self, *, hands: bool = False, face: bool = False, min_visibility: float = 0.5, model_complexity: int = 1):
        if face:
            raise PoseSourceError(FACE_REFUSED)
        if not 0.0 <= min_visibility <= 1.0:
            raise PoseSourceError(f"min_visibility must lie within 0..1, got {min_visibility}")
        if model_complexity not in (0, 1):
            # 2 (heavy) is not in the wheel: mediapipe would try to download it.
            raise PoseSourceError(f"model_complexity must be 0 (lite) or 1 (full, bundled), got {model_complexity}")
        self.hands, self.min_visibility = hands, min_visibility
        try:
            with warnings.catch_warnings():  # protobuf deprecation noise from mediapipe's own code
                warnings.simplefilter("ignore", UserWarning)
                from mediapipe.python.solutions import holistic, pose
        except ImportError as exc:
            raise PoseSourceError(
                f"the bundled pose detector needs mediapipe 0.10.14 ({exc}); install the project with `make setup`"
            ) from None
        options = {"static_image_mode": True, "model_complexity": model_complexity}
        # mediapipe opens every model (and logs about it) on its own threads after the graph is built;
        # one picture through the graph waits for that, so the whole start happens in the quiet window.
        with quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._graph = holistic.Holistic(**options) if hands else pose.Pose(**options)
            self._graph.process(np.zeros((8, 8, 3), dtype=np.uint8))
        self._lock = threading.Lock()  # a mediapipe graph runs one picture at a time

    def detect(self, image: Image.Image | np.ndarray) -> Pose:
        rgb = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise PoseSourceError(f"detect: expected an RGB picture, got an array of shape {rgb.shape}")
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        canvas = (rgb.shape[1], rgb.shape[0])
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = self._graph.process(rgb)
        if result.pose_landmarks is None:
            return Pose((), canvas)
        body = blazepose_to_coco18(_pixels(result.pose_landmarks, canvas, visibility=True), canvas, self.min_visibility)
        if not (body[:, 2] > 0).any():
            return Pose((), canvas)  # found, but nothing visible enough to draw
        left = right = None
        if self.hands:
            left = _hand(result.left_hand_landmarks, canvas)
            right = _hand(result.right_hand_landmarks, canvas)
            # OpenPose gives an all-missing hand rather than none when it looked for one.
            left = np.zeros((HAND_POINTS, 3)) if left is None else left
            right = np.zeros((HAND_POINTS, 3)) if right is None else right
        return Pose((Person(body, left, right),), canvas)

    def close(self) -> None:
        with quiet_native_stderr():
            self._graph.close()
