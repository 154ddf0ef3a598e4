"""The bundled (mediapipe) pose detector, its COCO-18 mapping, and detection from pictures and videos."""

from __future__ import annotations

import warnings

import imageio
import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from pose_sources import (
    COCO18_NAMES,
    ImageSpec,
    Person,
    Pose,
    PoseSourceError,
    VideoSpec,
    blazepose_to_coco18,
    get_detector,
    load,
)
from pose_sources.mediapipe_detector import BLAZEPOSE_NAMES

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from controlnet_aux.open_pose import util as aux_util
    from controlnet_aux.open_pose.body import Keypoint

I = {name: i for i, name in enumerate(COCO18_NAMES)}
B = {name: i for i, name in enumerate(BLAZEPOSE_NAMES)}

# Boxes (x0, y0, x1, y1) read off the 512x512 astronaut picture by eye, not from any detector:
# she faces the camera, so her right side is on the image's left. Her left elbow is behind the
# helmet she holds, hence the wide box.
ASTRONAUT_BOXES = {
    "nose": (200, 105, 245, 145),
    "r_shoulder": (60, 200, 170, 290),
    "l_shoulder": (260, 210, 360, 300),
    "r_elbow": (15, 340, 130, 470),
    "l_elbow": (280, 330, 400, 460),
}


def inside(point: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = box
    return point[2] > 0 and x0 <= point[0] <= x1 and y0 <= point[1] <= y1


@pytest.fixture(scope="module")
def detector():
    # The left elbow, behind the helmet, is detected with visibility ~0.3: keep it for the box test.
    det = get_detector(min_visibility=0.25)
    yield det
    det.close()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(astronaut())


def test_bundled_detector_finds_the_astronaut(detector, photo):
    pose = detector.detect(photo)
    assert pose.canvas == (512, 512) and len(pose.people) == 1
    body = pose.people[0].body
    for name, box in ASTRONAUT_BOXES.items():
        assert inside(body[I[name]], box), f"{name} at {body[I[name]]} is outside {box}"
    neck = body[I["neck"]]
    np.testing.assert_allclose(neck[:2], (body[I["r_shoulder"], :2] + body[I["l_shoulder"], :2]) / 2)


def test_default_threshold_drops_the_hidden_elbow(photo):
    body = get_detector().detect(photo).people[0].body  # min_visibility 0.5
    assert body[I["l_elbow"], 2] == 0 and (body[I["l_elbow"]] == 0).all()
    assert body[I["nose"], 2] >= 0.5 and body[I["r_elbow"], 2] >= 0.5
    # her hips are at the bottom edge, half hidden: not kept at 0.5
    assert body[I["r_hip"], 2] == 0 and body[I["l_hip"], 2] == 0


def test_flat_grey_picture_has_nobody(detector):
    pose = detector.detect(Image.new("RGB", (320, 240), (128, 128, 128)))
    assert pose == Pose((), (320, 240))


def test_blazepose_names_are_mediapipes_own():
    from mediapipe.python.solutions.pose import PoseLandmark

    assert BLAZEPOSE_NAMES == tuple(lm.name.lower() for lm in sorted(PoseLandmark, key=int))


def synthetic_landmarks() -> np.ndarray:
    """33 BlazePose landmarks (x, y, visibility) on a 200x100 canvas, each at a distinct place."""
    lm = np.array([[10 + 5 * i, 5 + 2.5 * i, 0.9] for i in range(33)], dtype=np.float64)
    lm[B["left_shoulder"]] = (120, 40, 0.95)
    lm[B["right_shoulder"]] = (80, 44, 0.8)
    lm[B["left_knee"], 2] = 0.3  # not visible enough
    lm[B["right_ankle"]] = (250, 50, 0.99)  # outside the 200-wide picture
    return lm


def test_blazepose_maps_onto_coco18_by_name():
    lm = synthetic_landmarks()
    body = blazepose_to_coco18(lm, (200, 100), min_visibility=0.5)
    assert body.shape == (18, 3)
    for coco, blaze in [("nose", "nose"), ("r_eye", "right_eye"), ("l_ear", "left_ear"), ("r_wrist", "right_wrist"),
                        ("l_hip", "left_hip"), ("l_ankle", "left_ankle"), ("r_shoulder", "right_shoulder")]:  # fmt: skip
        np.testing.assert_array_equal(body[I[coco]], lm[B[blaze]])
    np.testing.assert_allclose(body[I["neck"]], [100, 42, 0.8])  # shoulder midpoint, the weaker visibility
    assert (body[I["l_knee"]] == 0).all() and (body[I["r_ankle"]] == 0).all()  # missing stays missing
    visible = {COCO18_NAMES[i] for i in np.flatnonzero(body[:, 2] > 0)}
    assert visible == set(COCO18_NAMES) - {"l_knee", "r_ankle"}


def test_neck_needs_both_shoulders():
    lm = synthetic_landmarks()
    lm[B["right_shoulder"], 2] = 0.4
    body = blazepose_to_coco18(lm, (200, 100), min_visibility=0.5)
    assert (body[I["neck"]] == 0).all() and (body[I["r_shoulder"]] == 0).all()
    assert body[I["l_shoulder"], 2] > 0


def test_mapped_pose_draws_like_controlnet_aux():
    body = blazepose_to_coco18(synthetic_landmarks(), (200, 100), min_visibility=0.5)
    ours = np.asarray(Pose((Person(body),), (200, 100)).render((200, 100)))
    keypoints = [Keypoint(x / 200, y / 100) if c > 0 else None for x, y, c in body]
    theirs = aux_util.draw_bodypose(np.zeros((100, 200, 3), np.uint8), keypoints)
    assert ours.any()
    np.testing.assert_array_equal(ours, theirs)


def test_detector_choices_are_checked(tmp_path):
    with pytest.raises(PoseSourceError, match=r"face: .*no counterpart.*set face to false"):
        get_detector(face=True)
    with pytest.raises(PoseSourceError, match=r"detector_dir is only for the 'openpose' detector"):
        get_detector("mediapipe", detector_dir=tmp_path)
    with pytest.raises(PoseSourceError, match=r"detector 'openpose' needs detector_dir"):
        get_detector("openpose")
    with pytest.raises(PoseSourceError, match=r"detector must be one of mediapipe, openpose"):
        get_detector("dwpose")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def moving_clip(tmp_path_factory, photo):
    """A 320x256 clip: the astronaut (256 px) at x = 0, 32, 64, then mirrored at x = 0."""
    small = np.asarray(photo.resize((256, 256), Image.Resampling.BICUBIC))
    frames = []
    for x, flip in [(0, False), (32, False), (64, False), (0, True)]:
        frame = np.full((256, 320, 3), 96, np.uint8)
        frame[:, x : x + 256] = small[:, ::-1] if flip else small
        frames.append(frame)
    path = tmp_path_factory.mktemp("clip") / "astronaut.mp4"
    writer = imageio.get_writer(path, fps=4, codec="libx264", pixelformat="yuv420p", macro_block_size=16, quality=9)
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    return path


def test_video_poses_follow_the_picture(moving_clip):
    seq = load(VideoSpec(path=str(moving_clip)), size=(320, 256))  # no detector_dir: the bundled detector
    assert len(seq) == 4 and seq.metadata["detector"] == "mediapipe"
    assert all(len(p.people) == 1 for p in seq)
    bodies = [p.people[0].body for p in seq]
    # Head points are sharp (a few px of jitter at this size); shoulders are broad areas of the
    # suit that the detector places within ~15 px, so they get a looser check.
    for names, tol in [(("nose", "r_eye", "l_eye", "r_ear", "l_ear"), 4), (("neck", "r_shoulder", "l_shoulder"), 16)]:
        for name in names:
            x0, y0 = bodies[0][I[name], :2]
            assert bodies[1][I[name], 0] - x0 == pytest.approx(32, abs=tol), name
            assert bodies[2][I[name], 0] - x0 == pytest.approx(64, abs=tol), name
            assert bodies[2][I[name], 1] == pytest.approx(y0, abs=tol), name
    # mirrored: x -> 256 - x, and her sides swap places in the picture
    pairs = [("nose", "nose", 6), ("r_eye", "l_eye", 6), ("l_ear", "r_ear", 6),
             ("r_shoulder", "l_shoulder", 16), ("l_shoulder", "r_shoulder", 16)]  # fmt: skip
    for ours, mirrored, tol in pairs:
        assert bodies[3][I[ours], 0] == pytest.approx(256 - bodies[0][I[mirrored], 0], abs=tol), ours
        assert bodies[3][I[ours], 1] == pytest.approx(bodies[0][I[mirrored], 1], abs=tol), ours
    assert bodies[0][I["r_shoulder"], 0] < bodies[0][I["l_shoulder"], 0]
    assert bodies[3][I["r_shoulder"], 0] < bodies[3][I["l_shoulder"], 0]  # still her right on the image's left


def test_video_keeps_every_nth_frame(moving_clip):
    seq = load(VideoSpec(path=str(moving_clip), every_nth=2), size=(160, 128))
    assert len(seq) == 2 and seq.canvas == (160, 128)
    # frames 0 and 2 (shifted 64 px in 320, 32 px at half size)
    shift = seq[1].people[0].body[I["nose"], 0] - seq[0].people[0].body[I["nose"], 0]
    assert shift == pytest.approx(32, abs=3)


def test_image_spec_gives_one_pose(tmp_path, photo):
    path = tmp_path / "ref.png"
    photo.save(path)
    seq = load(ImageSpec(path=str(path)), size=(256, 256))
    assert len(seq) == 1 and seq.canvas == (256, 256) and len(seq[0].people) == 1
    assert inside(seq[0].people[0].body[I["nose"]] * [2, 2, 1], ASTRONAUT_BOXES["nose"])  # at half size
    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey)
    with pytest.raises(PoseSourceError, match=r"grey\.png: no person found in the pose picture"):
        load(ImageSpec(path=str(grey)), size=(64, 64))


def test_detector_fields_of_specs(tmp_path, moving_clip):
    assert VideoSpec(path=str(moving_clip)).detector == "mediapipe"
    weights = tmp_path / "annotators"
    weights.mkdir()
    (weights / "body_pose_model.pth").write_bytes(b"")
    # job files from before the bundled detector name only detector_dir: they meant OpenPose
    assert VideoSpec(path=str(moving_clip), detector_dir=str(weights)).detector == "openpose"
    with pytest.raises(ValueError, match=r"detector_dir: only the 'openpose' detector reads weights"):
        VideoSpec(path=str(moving_clip), detector="mediapipe", detector_dir=str(weights))
    with pytest.raises(ValueError, match=r"detector_dir: detector 'openpose' needs a local folder"):
        VideoSpec(path=str(moving_clip), detector="openpose")
    with pytest.raises(ValueError, match=r"face: .*set face to false"):
        VideoSpec(path=str(moving_clip), face=True)
    with pytest.raises(ValueError, match=r"not a picture file"):
        ImageSpec(path=str(moving_clip))
