"""`retarget: source`: the walk cycle moved onto the astronaut detected in the source picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from pose_sources import (
    COCO18_NAMES,
    PoseImagesSpec,
    PoseSourceError,
    get_detector,
    load,
    read_openpose_folder,
    retarget_to_subject,
    source_subject,
)

WALK = Path(__file__).resolve().parent.parent / "examples" / "poses" / "walk"
I = {name: i for i, name in enumerate(COCO18_NAMES)}
SIZE = (256, 256)


@pytest.fixture(scope="module")
def source_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def walk_on_astronaut(source_png):
    spec = {"kind": "openpose_json", "path": str(WALK), "retarget": "source"}
    return load(spec, size=SIZE, source_image=source_png)


@pytest.fixture(scope="module")
def astronaut_pose(source_png):
    return source_subject(source_png, SIZE)


def angle(v: np.ndarray) -> float:
    return float(np.arctan2(v[1], v[0]))


def test_first_frame_lands_on_the_astronaut(walk_on_astronaut, astronaut_pose):
    walk = read_openpose_folder(WALK)
    assert len(walk_on_astronaut) == len(walk) and walk_on_astronaut.canvas == SIZE
    first, subject = walk_on_astronaut[0].people[0].body, astronaut_pose.people[0].body
    np.testing.assert_allclose(first[I["neck"], :2], subject[I["neck"], :2], atol=1.0)
    # every point both show coincides (shoulders, her right elbow, nose, left eye and ear)
    both = [i for i in range(18) if first[i, 2] > 0 and subject[i, 2] > 0]
    assert {COCO18_NAMES[i] for i in both} >= {"nose", "neck", "r_shoulder", "l_shoulder", "r_elbow"}
    np.testing.assert_allclose(first[both, :2], subject[both, :2], atol=1.0)
    assert walk_on_astronaut.metadata["retarget"]["mode"] == "bones"


def test_later_frames_keep_the_walks_motion(walk_on_astronaut, astronaut_pose):
    walk = read_openpose_folder(WALK)
    subject = astronaut_pose.people[0].body
    a, b = I["r_shoulder"], I["r_elbow"]
    src_len = np.linalg.norm(subject[b, :2] - subject[a, :2])
    turn0 = angle(walk[0].people[0].body[b, :2] - walk[0].people[0].body[a, :2])
    walk_len0 = np.linalg.norm(walk[0].people[0].body[b, :2] - walk[0].people[0].body[a, :2])
    moved = []
    for t in range(len(walk)):
        ours, theirs = walk_on_astronaut[t].people[0].body, walk[t].people[0].body
        # the upper arm has her length in frame 0, then shortens/lengthens and turns as the walk's does
        walk_ratio = np.linalg.norm(theirs[b, :2] - theirs[a, :2]) / walk_len0
        assert np.linalg.norm(ours[b, :2] - ours[a, :2]) == pytest.approx(src_len * walk_ratio, rel=1e-6)
        turned = angle(ours[b, :2] - ours[a, :2]) - angle(subject[b, :2] - subject[a, :2])
        assert np.isclose(np.cos(turned), np.cos(angle(theirs[b, :2] - theirs[a, :2]) - turn0), atol=1e-6)
        moved.append(ours[I["r_wrist"], :2])
    assert max(np.linalg.norm(m - moved[0]) for m in moved) > 5  # the wrist swings


def test_hips_coincide_when_the_source_shows_them(source_png):
    # Her hips sit at the bottom edge with low visibility: at 0.15 the left one is kept.
    picture = Image.open(source_png).convert("RGB")
    subject = get_detector(min_visibility=0.15).detect(picture)
    body = subject.people[0].body
    assert body[I["l_hip"], 2] > 0
    seq = retarget_to_subject(read_openpose_folder(WALK, canvas=(512, 512)), subject)
    first = seq[0].people[0].body
    for name in ("neck", "l_hip"):
        np.testing.assert_allclose(first[I[name], :2], body[I[name], :2], atol=1.0)


def test_grey_source_says_nobody_was_found_and_how_to_turn_it_off(tmp_path):
    grey = Image.new("RGB", SIZE, (128, 128, 128))
    spec = {"kind": "openpose_json", "path": str(WALK), "retarget": "source"}
    with pytest.raises(PoseSourceError, match=r"no person found in the source image.*frames\.poses\.retarget: none"):
        load(spec, size=SIZE, source_image=grey)


def test_retarget_source_needs_the_source_image():
    spec = {"kind": "openpose_json", "path": str(WALK), "retarget": "source"}
    with pytest.raises(PoseSourceError, match=r"needs the job's source image.*frames\.poses\.retarget: none"):
        load(spec, size=SIZE)


def test_without_retarget_the_source_is_not_looked_at():
    spec = {"kind": "openpose_json", "path": str(WALK)}
    grey = Image.new("RGB", SIZE, (128, 128, 128))
    assert load(spec, size=SIZE, source_image=grey) == load(spec, size=SIZE)


def test_fitted_picture_and_path_give_the_same_subject(source_png):
    # a wide canvas: the path is centre-cropped to 2:1, the caller's picture is taken as fitted
    wide = (256, 128)
    from_path = source_subject(source_png, wide)
    cropped = Image.open(source_png).convert("RGB").crop((0, 128, 512, 384))
    from_picture = source_subject(cropped, wide)
    assert from_path.canvas == wide == from_picture.canvas
    np.testing.assert_allclose(from_path.people[0].body, from_picture.people[0].body, atol=1e-6)


def test_pose_images_cannot_be_retargeted(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"pose images have no keypoints to retarget.*retarget: none"):
        PoseImagesSpec(source=str(tmp_path), retarget="source")
