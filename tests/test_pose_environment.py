"""The installed cv2 is the one `make setup` promises: headless OpenCV serving everyone.

mediapipe (the bundled pose detector) depends on opencv-contrib-python and controlnet-aux on
opencv-python-headless; both wheels write the same `cv2` folder. pyproject.toml pins both to
one release and the Makefile reinstalls the headless build last. These tests fail when that
did not happen (e.g. a plain `pip install -e .` that left the contrib build on top).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")


def _record_hash(dist: str, relative: str) -> str | None:
    for entry in md.distribution(dist).files or []:
        if str(entry) == relative:
            return entry.hash.value if entry.hash else None
    return None


def test_both_opencv_wheels_are_the_same_release():
    assert md.version("opencv-python-headless") == md.version("opencv-contrib-python")
    assert cv2.__version__ == md.version("opencv-python-headless").rsplit(".", 1)[0]


def test_cv2_binary_is_the_headless_build():
    binary = next(Path(cv2.__file__).parent.glob("cv2*.so"), None) or next(Path(cv2.__file__).parent.glob("cv2*.pyd"))
    relative = f"cv2/{binary.name}"
    digest = base64.urlsafe_b64encode(hashlib.sha256(binary.read_bytes()).digest()).rstrip(b"=").decode()
    assert digest == _record_hash("opencv-python-headless", relative), (
        "cv2 is not opencv-python-headless's build: run `make setup` (it reinstalls the headless wheel last)"
    )


def test_cv2_serves_optical_flow_and_controlnet_aux():
    rng = np.random.default_rng(0)
    a = (rng.random((64, 64)) * 255).astype(np.uint8)
    a = cv2.GaussianBlur(a, (7, 7), 2)
    b = np.roll(a, 2, axis=1)  # everything moves 2 px to the right
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    farneback = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    for flow in (dis, farneback):
        assert abs(float(np.median(flow[16:48, 16:48, 0])) - 2.0) < 0.5
    from controlnet_aux.open_pose import util  # imports cv2 itself

    canvas = util.draw_bodypose(np.zeros((32, 32, 3), np.uint8), [None] * 18)
    assert canvas.shape == (32, 32, 3)


def test_mediapipe_ships_its_pose_model():
    import mediapipe

    assert md.version("mediapipe") == "0.10.14"
    model = Path(mediapipe.__file__).parent / "modules" / "pose_landmark" / "pose_landmark_full.tflite"
    assert model.is_file() and model.stat().st_size > 1_000_000
