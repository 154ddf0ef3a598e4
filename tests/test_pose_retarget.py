"""Retargeting a sequence onto a reference subject."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest_pose import BODY_64x48, pose

from pose_sources import Person, Pose, PoseOutsideCanvasError, PoseSequence, PoseSourceError, retarget

REF_CANVAS = (200, 160)


def moved(scale: float, offset: tuple[float, float], canvas=REF_CANVAS, base=BODY_64x48) -> Pose:
    pts = base.copy()
    pts[:, :2] = pts[:, :2] * scale + offset
    return Pose((Person(pts),), canvas)


@pytest.fixture
def walk() -> PoseSequence:
    # the subject steps 4 px right and 2 px down per frame, on a 64x48 canvas
    return PoseSequence([pose(shift=(4.0 * i, 2.0 * i)) for i in range(3)])


def test_first_pose_lands_on_the_reference_and_motion_is_kept(walk):
    reference = moved(2.0, (40.0, 20.0))
    out = retarget(walk, reference)
    assert out.canvas == REF_CANVAS and len(out) == 3
    np.testing.assert_allclose(out[0].people[0].body, reference.people[0].body, atol=1e-9)
    # the same similarity transform on every frame: steps scale by 2
    step = out[1].people[0].body[:, :2] - out[0].people[0].body[:, :2]
    np.testing.assert_allclose(step, np.tile([8.0, 4.0], (18, 1)), atol=1e-9)
    assert out.metadata["retarget"]["scale"] == pytest.approx(2.0)
    assert out.metadata["retarget"]["outside_px"] == 0.0


def test_reference_with_other_proportions_matches_bbox_centre_and_height(walk):
    ref_body = BODY_64x48.copy()
    ref_body[:, 0] = 32 + (ref_body[:, 0] - 32) * 1.5  # a broader subject
    reference = moved(1.5, (50.0, 30.0), base=ref_body)
    first = retarget(walk, reference)[0].people[0].visible_points(body_only=True)
    ref = reference.people[0].visible_points(body_only=True)
    assert first[:, 1].max() - first[:, 1].min() == pytest.approx(ref[:, 1].max() - ref[:, 1].min())
    np.testing.assert_allclose((first.min(0) + first.max(0)) / 2, (ref.min(0) + ref.max(0)) / 2)


def test_torso_mode_matches_neck_and_torso_length(walk):
    reference = moved(1.25, (60.0, 10.0))
    out = retarget(walk, reference, size_by="torso")
    got, ref = out[0].people[0].body, reference.people[0].body
    np.testing.assert_allclose(got[1, :2], ref[1, :2])
    hips = lambda b: (b[8, :2] + b[11, :2]) / 2  # noqa: E731
    assert np.linalg.norm(hips(got) - got[1, :2]) == pytest.approx(np.linalg.norm(hips(ref) - ref[1, :2]))


def test_leaving_the_canvas_raises_with_how_far(walk):
    # first frame fits exactly at the right edge; later frames step 4 px * 3 further right
    reference = moved(3.0, (200 - 42 * 3.0, 10.0))
    with pytest.raises(
        PoseOutsideCanvasError,
        match=r"retargeted poses go 24\.0 px \(12\.0% of the width\) past the right edge of the 200x160 canvas \(worst in frame 2\)",
    ) as info:
        retarget(walk, reference)
    assert info.value.overflow.right == pytest.approx(24.0)
    assert info.value.overflow.left == 0.0 and info.value.overflow.frame == 2


def test_allow_outside_logs_and_returns(walk, caplog):
    reference = moved(3.0, (200 - 42 * 3.0, 10.0))
    with caplog.at_level(logging.WARNING, logger="pose_sources.retarget"):
        out = retarget(walk, reference, allow_outside=True)
    assert "24.0 px (12.0% of the width) past the right edge" in caplog.text
    assert out.metadata["retarget"]["outside_px"] == pytest.approx(24.0)


def test_unmeasurable_subjects_are_refused(walk):
    lonely = np.zeros((18, 3))
    lonely[0] = (10, 10, 1)
    with pytest.raises(PoseSourceError, match=r"reference person: needs at least two visible body points"):
        retarget(walk, Pose((Person(lonely),), REF_CANVAS))
    with pytest.raises(PoseSourceError, match=r"the reference pose has 0 people"):
        retarget(walk, Pose((), REF_CANVAS))
    no_neck = moved(1.0, (0.0, 0.0))
    body = no_neck.people[0].body.copy()
    body[1] = 0
    with pytest.raises(PoseSourceError, match=r"size_by='torso' needs the neck and a hip"):
        retarget(walk, Pose((Person(body),), REF_CANVAS), size_by="torso")
