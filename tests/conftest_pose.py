"""Shared builders for the pose_sources tests (imported by tests/test_pose_*.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pose_sources import Person, Pose

# A small standing person on a 64x48 canvas (COCO-18 order, pixels, confidence).
# Power-of-two-friendly numbers keep normalised <-> pixel conversions exact.
BODY_64x48 = np.array(
    [
        [32, 8, 0.9], [32, 13, 0.9],                  # nose, neck
        [26, 13, 0.8], [24, 20, 0.8], [22, 27, 0.7],  # right arm
        [38, 13, 0.8], [40, 20, 0.8], [42, 27, 0.7],  # left arm
        [28, 27, 0.9], [28, 35, 0.9], [28, 43, 0.9],  # right leg
        [36, 27, 0.9], [36, 35, 0.9], [36, 43, 0.9],  # left leg
        [30, 7, 0.9], [34, 7, 0.9], [28, 8, 0.9], [36, 8, 0.9],  # eyes, ears
    ],
    dtype=np.float64,
)  # fmt: skip
CANVAS = (64, 48)


def body(missing: tuple[int, ...] = (), shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    out = BODY_64x48.copy()
    out[:, :2] += shift
    out[list(missing)] = 0.0
    return out


def pose(missing: tuple[int, ...] = (), shift: tuple[float, float] = (0.0, 0.0), **parts) -> Pose:
    return Pose((Person(body(missing, shift), **parts),), CANVAS)


def hand(x0: float, y0: float) -> np.ndarray:
    """21 points fanning out from a wrist at (x0, y0)."""
    pts = np.zeros((21, 3))
    pts[0] = (x0, y0, 1.0)
    for finger in range(5):
        for joint in range(4):
            pts[1 + finger * 4 + joint] = (x0 - 4 + 2 * finger, y0 + 2 + 1.5 * joint, 1.0)
    return pts


def face(cx: float, cy: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 70, endpoint=False)
    return np.stack([cx + 3 * np.cos(angles), cy + 3 * np.sin(angles), np.ones(70)], axis=1)


def write_json(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def openpose_doc(flat_body: list[float], **extra) -> dict:
    return {"version": 1.3, "people": [{"pose_keypoints_2d": flat_body}], **extra}
