"""Drawing poses exactly the way controlnet_aux's OpenPose detector draws them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .aux_import import import_quietly
from .keypoints import PoseLike, Size, _as_size

if TYPE_CHECKING:
    from PIL import Image


def _util():
    return import_quietly("controlnet_aux.open_pose.util")


def _keypoint(x: float, y: float):
    return import_quietly("controlnet_aux.open_pose.body").Keypoint(x=x, y=y)


def body_keypoints(body: np.ndarray, canvas: Size) -> list:
    """controlnet_aux's body input: 18 normalised Keypoints, None where missing."""
    w, h = canvas
    return [_keypoint(x / w, y / h) if c > 0 else None for x, y, c in body]


def part_keypoints(points: np.ndarray | None, canvas: Size) -> list | None:
    """controlnet_aux's hand/face input: normalised Keypoints, (-1, -1) where missing.

    That is the detector's own convention: its hand and face drawing skip points whose
    coordinates are not > 0, and (unlike the body) do not accept None entries.
    """
    if points is None:
        return None
    w, h = canvas
    return [_keypoint(x / w, y / h) if c > 0 else _keypoint(-1.0, -1.0) for x, y, c in points]


def draw_handpose(canvas: np.ndarray, keypoints: list | None) -> np.ndarray:
    # controlnet_aux's hand drawing imports matplotlib (a dependency of this project for it).
    return _util().draw_handpose(canvas, keypoints)


def draw_pose_array(pose: PoseLike, size: Size, *, hands: bool = True, face: bool = True) -> np.ndarray:
    """HxWx3 uint8 map, drawn like controlnet_aux's draw_poses (per person: body, hands, face)."""
    util = _util()
    W, H = _as_size(size)
    canvas = np.zeros((H, W, 3), dtype=np.uint8)
    for person in pose.people:
        canvas = util.draw_bodypose(canvas, body_keypoints(person.body, pose.canvas))
        if hands:
            canvas = draw_handpose(canvas, part_keypoints(person.left_hand, pose.canvas))
            canvas = draw_handpose(canvas, part_keypoints(person.right_hand, pose.canvas))
        if face:
            canvas = util.draw_facepose(canvas, part_keypoints(person.face, pose.canvas))
    return canvas


def render_pose(pose: PoseLike, size: Size, *, hands: bool = True, face: bool = True) -> Image.Image:
    from PIL import Image

    return Image.fromarray(draw_pose_array(pose, size, hands=hands, face=face))
