"""Keyframe interpolation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_pose import CANVAS, BODY_64x48, pose

from pose_sources import Person, Pose, PoseSourceError, interpolate_keyframes, interpolate_pose
from pose_sources.keyframes import ease


def body(p: Pose, person: int = 0) -> np.ndarray:
    return p.people[person].body


@pytest.fixture
def a() -> Pose:
    return pose()


@pytest.fixture
def b() -> Pose:
    moved = BODY_64x48.copy()
    moved[:, :2] += [8.0, -4.0]
    moved[4, :2] = (10.0, 6.0)  # the right wrist goes up
    moved[:, 2] = 0.5
    return Pose((Person(moved),), CANVAS)


def test_endpoints_are_the_keyframes_and_midpoint_the_average(a, b):
    seq = interpolate_keyframes([a, b], 5)
    assert len(seq) == 5 and seq.canvas == CANVAS
    assert seq[0] == a and seq[4] == b
    np.testing.assert_allclose(body(seq[2]), (body(a) + body(b)) / 2)
    np.testing.assert_allclose(body(seq[1]), 0.75 * body(a) + 0.25 * body(b))


def test_explicit_positions_and_holding_before_and_after(a, b):
    c = pose(shift=(-6.0, 2.0))
    seq = interpolate_keyframes([a, b, c], 9, at=[1, 3, 7])
    assert seq.metadata["keyframe_positions"] == [1, 3, 7]
    assert seq[0] == a and seq[1] == a and seq[3] == b and seq[7] == c and seq[8] == c
    np.testing.assert_allclose(body(seq[2]), (body(a) + body(b)) / 2)
    np.testing.assert_allclose(body(seq[5]), (body(b) + body(c)) / 2)


def test_spread_evenly_puts_first_and_last_on_the_ends(a, b):
    c = pose(shift=(-6.0, 2.0))
    seq = interpolate_keyframes([a, b, c], 7)
    assert seq.metadata["keyframe_positions"] == [0, 3, 6]
    assert seq[3] == b and seq[6] == c


def test_ease_in_out_keeps_midpoint_but_slows_near_keyframes(a, b):
    lin = interpolate_keyframes([a, b], 9)
    eased = interpolate_keyframes([a, b], 9, easing="ease_in_out")
    np.testing.assert_allclose(body(eased[4]), body(lin[4]))
    step_lin = np.abs(body(lin[1]) - body(a))[:, :2].sum()
    step_eased = np.abs(body(eased[1]) - body(a))[:, :2].sum()
    assert step_eased < 0.5 * step_lin
    assert ease(0.25, "ease_in_out") == pytest.approx(0.5 - 0.5 * np.cos(np.pi / 4))


def test_missing_points_stay_missing_in_between(a, b):
    a_missing = pose(missing=(7, 10))  # left wrist and right ankle missing at the start
    seq = interpolate_keyframes([a_missing, b], 4)
    for frame in seq[1:3]:
        pts = body(frame)
        assert (pts[[7, 10]] == 0).all()  # missing, not sliding in from (0, 0)
        assert (pts[[0, 1, 4]][:, 2] > 0).all()
    assert (body(seq[3])[[7, 10], 2] > 0).all()  # present again at the keyframe that has them


def test_a_person_in_only_one_keyframe_is_absent_in_between(a, b):
    two = Pose((b.people[0], Person(BODY_64x48 * [0.5, 1, 1])), CANVAS)
    seq = interpolate_keyframes([a, two], 3)
    assert len(seq[1].people) == 1 and len(seq[2].people) == 2


def test_hands_interpolate_only_when_both_have_them(a):
    h0 = np.tile([20.0, 20.0, 1.0], (21, 1))
    h1 = np.tile([30.0, 24.0, 1.0], (21, 1))
    k0 = Pose((Person(BODY_64x48, left_hand=h0),), CANVAS)
    k1 = Pose((Person(BODY_64x48, left_hand=h1, right_hand=h1),), CANVAS)
    mid = interpolate_pose(k0, k1, 0.5)
    np.testing.assert_allclose(mid.people[0].left_hand[:, :2], np.tile([25.0, 22.0], (21, 1)))
    assert mid.people[0].right_hand is None


def test_loop_returns_to_the_first_keyframe(a, b):
    seq = interpolate_keyframes([a, b], 4, loop=True)
    assert seq.metadata["keyframe_positions"] == [0, 2]
    assert seq[0] == a and seq[2] == b
    np.testing.assert_allclose(body(seq[3]), (body(a) + body(b)) / 2)
    np.testing.assert_allclose(body(seq[1]), (body(a) + body(b)) / 2)


def test_single_keyframe_is_held(a):
    seq = interpolate_keyframes([a], 3)
    assert len(seq) == 3 and all(p == a for p in seq)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 0}, r"frames must be at least 1, got 0"),
        ({"frames": 1}, r"2 keyframes do not fit in 1 frames"),
        ({"frames": 5, "at": [0]}, r"'at' has 1 frame indices for 2 keyframes"),
        ({"frames": 5, "at": [3, 1]}, r"strictly increasing"),
        ({"frames": 5, "at": [0, 5]}, r"within 0\.\.4"),
        ({"frames": 5, "easing": "bouncy"}, r"easing must be 'linear' or 'ease_in_out'"),
    ],
)
def test_bad_arguments(a, b, kwargs, message):
    with pytest.raises(PoseSourceError, match=message):
        interpolate_keyframes([a, b], **kwargs)


def test_keyframes_on_different_canvases_are_refused(a):
    other = Pose((Person(BODY_64x48),), (128, 96))
    with pytest.raises(PoseSourceError, match=r"keyframe 1 has canvas \(128, 96\)"):
        interpolate_keyframes([a, other], 4)
