"""Driving video -> poses: plumbing with a random-weight OpenPose body model saved to disk."""

from __future__ import annotations

import warnings

import imageio
import numpy as np
import pytest
import torch

from pose_sources import PoseSequence, PoseSourceError, VideoSpec, load, load_openpose_detector
from pose_sources.video import pose_from_detection, read_video_frames

with warnings.catch_warnings():  # timm registry noise at import
    warnings.simplefilter("ignore", UserWarning)
    from controlnet_aux.open_pose import OpenposeDetector, PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint
    from controlnet_aux.open_pose.model import bodypose_model

FRAMES, H, W = 7, 48, 64


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    """A folder laid out like lllyasviel/Annotators, holding a random-init body model.

    controlnet_aux's Body loads checkpoints whose keys lack the first module name
    ("conv1_1.weight" for "model0.conv1_1.weight") and maps them back (util.transfer), so
    the state dict is saved that way, like the published body_pose_model.pth. fp16 halves
    the file; load_state_dict casts back to fp32.
    """
    torch.manual_seed(0)
    state = bodypose_model().state_dict()
    folder = tmp_path_factory.mktemp("annotators")
    torch.save({k.split(".", 1)[1]: v.half() for k, v in state.items()}, folder / "body_pose_model.pth")
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    writer = imageio.get_writer(path, fps=8, codec="libx264", pixelformat="yuv420p", macro_block_size=16)
    for i in range(FRAMES):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:, :, 0] = 30 * i  # a frame number you can read back from the colour
        frame[10:40, 20 + 3 * i : 30 + 3 * i] = 255
        writer.append_data(frame)
    writer.close()
    return path


@pytest.fixture
def counted(monkeypatch):
    """Records the image of every detector call (the detector itself still runs)."""
    seen: list[np.ndarray] = []
    original = OpenposeDetector.detect_poses

    def spy(self, image, *args, **kwargs):
        seen.append(image)
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(OpenposeDetector, "detect_poses", spy)
    return seen


def test_frames_are_decoded_every_nth_and_capped(video):
    reds = [int(f[..., 0].mean().round(-1)) for f in read_video_frames(video, every_nth=2)]
    assert len(reds) == 4 and reds[0] < reds[1] < reds[2] < reds[3]  # frames 0, 2, 4, 6
    assert len(list(read_video_frames(video, every_nth=1, max_frames=3))) == 3
    assert next(read_video_frames(video)).shape == (H, W, 3)


def test_detector_loads_the_saved_weights(detector_dir):
    detector = load_openpose_detector(detector_dir)
    saved = torch.load(detector_dir / "body_pose_model.pth")
    loaded = detector.body_estimation.model.state_dict()
    torch.testing.assert_close(loaded["model0.conv1_1.weight"], saved["conv1_1.weight"].float())
    torch.testing.assert_close(loaded["model6_2.Mconv7_stage6_L2.bias"], saved["Mconv7_stage6_L2.bias"].float())
    assert detector.hand_estimation is None and detector.face_estimation is None


def test_video_through_load_runs_the_detector_once_per_kept_frame(video, detector_dir, counted):
    # every 3rd frame, at most 2: frames 0 and 3 (the random-weight network costs ~0.5 s a call)
    spec = VideoSpec(
        path=str(video), detector="openpose", detector_dir=str(detector_dir), every_nth=3, max_frames=2, detect_resolution=64
    )
    seq = load(spec, size=(32, 24))
    assert isinstance(seq, PoseSequence)
    assert len(seq) == 2 and len(counted) == 2
    # prepared like OpenposeDetector.__call__ does: short side 64, sides multiples of 64
    assert [img.shape for img in counted] == [(64, 64, 3)] * 2
    # the frames' red level tells which video frames were used (30 per frame index)
    assert [int(round(img[2:8, 2:8, 0].mean() / 30)) for img in counted] == [0, 3]
    assert seq.canvas == (32, 24) and seq.metadata["every_nth"] == 3 and seq.metadata["detector"] == "openpose"
    maps = seq.render((32, 24))
    assert len(maps) == 2 and all(m.size == (32, 24) and m.mode == "RGB" for m in maps)


def test_detections_become_poses_on_the_frame_canvas():
    body = [Keypoint(0.5, 0.25)] + [None] * 16 + [Keypoint(0.75, 0.5)]
    hand = [Keypoint(0.1, 0.2)] + [Keypoint(-1.0, -1.0)] * 20  # the detector's "missing"
    result = PoseResult(BodyResult(body, total_score=1.0, total_parts=2), hand, None, None)
    p = pose_from_detection([result], (200, 100))
    assert p.canvas == (200, 100) and len(p.people) == 1
    person = p.people[0]
    assert person.body[0].tolist() == [100.0, 25.0, 1.0] and person.body[17].tolist() == [150.0, 50.0, 1.0]
    assert (person.body[1:17] == 0).all()
    assert person.left_hand[0].tolist() == pytest.approx([20.0, 20.0, 1.0]) and (person.left_hand[1:] == 0).all()
    assert person.right_hand is None and person.face is None


def test_undecodable_video(tmp_path, detector_dir):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(PoseSourceError, match=r"broken\.mp4: cannot decode video"):
        load(VideoSpec(path=str(bad), detector_dir=str(detector_dir)), size=(16, 16))


def test_detector_folder_without_weights(tmp_path, video, detector_dir):
    with pytest.raises(PoseSourceError, match=r"has no body_pose_model\.pth"):
        load_openpose_detector(tmp_path)
    with pytest.raises(PoseSourceError, match=r"has no hand_pose_model\.pth"):
        load_openpose_detector(detector_dir, hands=True)
    with pytest.raises(ValueError, match=r"detector_dir: .*has no body_pose_model\.pth"):
        VideoSpec(path=str(video), detector_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"has no facenet\.pth.*set face to false"):
        VideoSpec(path=str(video), detector_dir=str(detector_dir), face=True)


def test_weights_that_do_not_fit_the_network(tmp_path):
    torch.save({"conv1_1.weight": torch.zeros(1)}, tmp_path / "body_pose_model.pth")
    with pytest.raises(PoseSourceError, match=r"body_pose_model\.pth: cannot load OpenPose weights"):
        load_openpose_detector(tmp_path)


def test_detect_image_pose_gives_a_pose_on_the_image_canvas(detector_dir, counted):
    from PIL import Image

    from pose_sources import detect_image_pose

    image = Image.new("RGB", (40, 30), (200, 100, 50))
    p = detect_image_pose(image, detector_dir, detect_resolution=64)
    assert p.canvas == (40, 30) and len(counted) == 1
    assert counted[0].shape == (64, 64, 3) and tuple(counted[0][5, 5]) == (200, 100, 50)


def test_unknown_device_is_reported(detector_dir):
    with pytest.raises(PoseSourceError, match=r"device 'no_such_device': cannot run the OpenPose detector there"):
        load_openpose_detector(detector_dir, device="no_such_device")
