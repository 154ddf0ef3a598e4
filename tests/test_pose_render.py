"""Rendering: our maps must be exactly what controlnet_aux's OpenPose detector draws."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest_pose import CANVAS, BODY_64x48, face, hand, openpose_doc, pose, write_json

from pose_sources import Person, Pose, read_openpose_json
from pose_sources.render import part_keypoints

with warnings.catch_warnings():  # timm registry noise at import
    warnings.simplefilter("ignore", UserWarning)
    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint


def detector_style_body(points: np.ndarray, canvas=CANVAS) -> list:
    """What OpenposeDetector.detect_poses hands to draw_bodypose: normalised Keypoints, None if missing."""
    return [Keypoint(x=x / canvas[0], y=y / canvas[1]) if c > 0 else None for x, y, c in points]


def blank(size):
    w, h = size
    return np.zeros((h, w, 3), dtype=np.uint8)


def test_render_matches_draw_bodypose_pixel_for_pixel():
    p = pose(missing=(4, 17))  # a wrist and an ear missing: their limbs are skipped
    expected = util.draw_bodypose(blank(CANVAS), detector_style_body(p.people[0].body))
    got = np.asarray(p.render())
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
    assert expected.any()
    np.testing.assert_array_equal(got, expected)
    # and the missing points really change the picture
    full = np.asarray(pose().render())
    assert not np.array_equal(full, got)


def test_render_scales_to_the_requested_size():
    p = pose()
    img = p.render((128, 96))
    assert img.size == (128, 96) and img.mode == "RGB"
    expected = util.draw_bodypose(blank((128, 96)), detector_style_body(BODY_64x48))
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_several_people_are_drawn_in_order():
    second = BODY_64x48.copy()
    second[:, 0] -= 16
    p = Pose((Person(BODY_64x48), Person(second)), CANVAS)
    expected = blank(CANVAS)
    expected = util.draw_bodypose(expected, detector_style_body(BODY_64x48))
    expected = util.draw_bodypose(expected, detector_style_body(second))
    np.testing.assert_array_equal(np.asarray(p.render()), expected)


@pytest.fixture
def draw_handpose():
    return util.draw_handpose


def test_hands_and_face_match_controlnet_aux_drawing(draw_handpose):
    left, right = hand(44, 28), hand(20, 28)
    left[5] = 0.0  # a missing finger joint: the detector marks it (-1, -1), it is not drawn
    f = face(32, 8)
    p = pose(left_hand=left, right_hand=right, face=f)
    person = p.people[0]

    expected = util.draw_bodypose(blank(CANVAS), detector_style_body(person.body))
    expected = draw_handpose(expected, part_keypoints(person.left_hand, CANVAS))
    expected = draw_handpose(expected, part_keypoints(person.right_hand, CANVAS))
    expected = util.draw_facepose(expected, part_keypoints(person.face, CANVAS))
    got = np.asarray(p.render())
    np.testing.assert_array_equal(got, expected)

    body_only = np.asarray(p.render(hands=False, face=False))
    np.testing.assert_array_equal(body_only, np.asarray(pose().render()))
    assert not np.array_equal(got, body_only)


def _flat(points: np.ndarray) -> list[float]:
    return [float(v) for v in points.reshape(-1)]


def test_coco18_body25_and_normalised_inputs_give_the_same_map(tmp_path):
    coco = BODY_64x48.copy()
    coco[16] = 0.0  # a missing ear survives every layout
    # BODY_25: COCO points 0-7, MidHip at 8, COCO 8-17 at 9-18, six foot points at 19-24.
    body25 = np.concatenate([coco[:8], [[32, 27, 0.9]], coco[8:], np.tile([[30, 46, 0.5]], (6, 1))])
    normalised = coco.copy()
    normalised[:, 0] /= 64
    normalised[:, 1] /= 48
    w, h = CANVAS
    files = {
        "coco": write_json(tmp_path / "coco.json", openpose_doc(_flat(coco), canvas_width=w, canvas_height=h)),
        "body25": write_json(tmp_path / "b25.json", openpose_doc(_flat(body25), canvas_width=w, canvas_height=h)),
        "normalised": write_json(tmp_path / "norm.json", openpose_doc(_flat(normalised))),
    }
    poses = {k: read_openpose_json(f, default_canvas=CANVAS) for k, f in files.items()}
    assert poses["coco"] == poses["body25"]
    np.testing.assert_allclose(poses["normalised"].people[0].body, poses["coco"].people[0].body, atol=1e-9)
    maps = {k: np.asarray(p.render((64, 48))) for k, p in poses.items()}
    assert maps["coco"].any()
    np.testing.assert_array_equal(maps["body25"], maps["coco"])
    np.testing.assert_array_equal(maps["normalised"], maps["coco"])
