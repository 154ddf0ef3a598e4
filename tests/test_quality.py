"""Quality metrics on synthetic frames with known answers (flows/quality/); no model, no Prefect run."""

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from flows import quality
from flows.jobdir.frames_io import write_json_atomic
from flows.quality import measure
from flows.quality.report import metrics_table
from pose_sources import Person, Pose


def texture(h=200, w=200, seed=0):
    """Smooth random colour texture: trackable by optical flow, different everywhere."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def translated(n=4, step=3, size=64):
    big = texture()
    return [big[20 : 20 + size, 20 + step * k : 20 + step * k + size].copy() for k in range(n)]


def shifted(image, red):
    return np.clip(image.astype(int) + [red, 0, 0], 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ flicker


def test_identical_frames_have_no_flicker():
    frame = translated(1)[0]
    f = quality.pair_flicker(frame, frame.copy())
    assert f.warp_error == 0.0 and f.frame_difference == 0.0 and f.consistent_fraction == 1.0


def test_translation_is_explained_by_the_flow():
    frames = translated(4, step=3)
    for a, b in zip(frames, frames[1:]):
        f = quality.pair_flicker(a, b)
        assert f.frame_difference > 10.0  # plain differences see the motion...
        assert f.warp_error < 1.0  # ...the warp error does not
        assert f.consistent_fraction > 0.8  # the strip that leaves the picture is excluded


def test_independent_noise_is_high_warp_error():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    f = quality.pair_flicker(a, b)
    assert f.warp_error > 50.0  # uniform noise: E|X - Y| = 85


def test_consistency_mask_rejects_a_flow_that_the_backward_flow_does_not_undo():
    fwd = np.zeros((8, 8, 2), np.float32)
    fwd[..., 0] = 2.0
    assert quality.consistent_flow_mask(fwd, -fwd)[:, :6].all()
    assert not quality.consistent_flow_mask(fwd, -fwd)[:, 7].any()  # lands outside the picture
    assert not quality.consistent_flow_mask(fwd, fwd).any()  # forward and back do not cancel


# ------------------------------------------------------------------ appearance


def test_appearance_distance_grows_with_a_colour_shift():
    frame = translated(1)[0]
    # Keep the values mid-range so the shift is not clipped.
    frame = (frame.astype(int) // 2 + 40).astype(np.uint8)
    distances = [quality.appearance(frame, shifted(frame, d)).emd for d in (0, 5, 10, 20, 40)]
    assert distances[0] == 0.0
    assert all(x < y for x, y in zip(distances, distances[1:]))
    a = quality.appearance(frame, shifted(frame, 20))
    assert a.region == "frame" and a.background_ssim is None
    assert 0.0 < a.bhattacharyya <= 1.0


def test_emd_is_in_lab_units():
    grey = np.full((16, 16, 3), 100, np.uint8)
    lighter = np.full((16, 16, 3), 150, np.uint8)
    lab = [cv2.cvtColor(x, cv2.COLOR_RGB2Lab)[0, 0].astype(float) for x in (grey, lighter)]
    expected_l = (lab[1][0] - lab[0][0]) * 100 / 255  # a* and b* of greys are equal
    a = quality.appearance(grey, lighter)
    assert a.emd_per_channel[0] == pytest.approx(expected_l)
    assert a.emd_per_channel[1:] == pytest.approx((0.0, 0.0), abs=1.0)


def test_mask_restricts_the_appearance_metric_to_its_region():
    source = translated(1)[0]
    frame = source.copy()
    frame[:, 32:] = shifted(texture(seed=7)[:64, 32:64], 60)  # only the right half changes (colour and texture)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    inside = quality.appearance(source, frame, source_mask=left)
    whole = quality.appearance(source, frame)
    assert inside.region == "subject" and inside.emd == 0.0
    assert whole.emd > 1.0
    # The background (right half) changed: low SSIM there; with the changed half as the subject the
    # background is the unchanged half (SSIM below 1 only in windows that straddle the border).
    assert inside.background_ssim < 0.5
    right = Image.fromarray((~left).astype(np.uint8) * 255)  # a mask picture: white = subject
    assert quality.appearance(source, frame, source_mask=right).background_ssim > 0.85


def test_empty_mask_is_a_clear_error():
    frame = translated(1)[0]
    with pytest.raises(ValueError, match="mask"):
        quality.appearance(frame, frame, source_mask=np.zeros((64, 64), bool))


# ------------------------------------------------------------------ PSNR


def test_psnr_known_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert quality.psnr(a, a) == math.inf
    assert quality.psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    b = a.copy()
    b[0, 0, 0] = 0  # one value off by 100 out of 192
    assert quality.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100**2 / 192)))


# ------------------------------------------------------------------ pose fidelity

SIZE = (200, 100)  # diagonal 223.6 px -> 5 % = 11.18 px


def body(points):
    arr = np.zeros((18, 3))
    for i, (x, y) in points.items():
        arr[i] = (x, y, 1.0)
    return arr


REQUESTED = {0: (100, 20), 1: (100, 40), 2: (80, 40), 5: (120, 40), 8: (90, 80), 11: (110, 80)}


def pose(points, size=SIZE, dx=0.0):
    return Pose((Person(body({i: (x + dx, y) for i, (x, y) in points.items()})),), size)


def test_pck_perfect_shifted_and_partial():
    req = pose(REQUESTED)
    perfect = quality.pose_fidelity(req, pose(REQUESTED))
    assert (perfect.pck, perfect.mean_distance, perfect.requested) == (1.0, 0.0, 6)
    near = quality.pose_fidelity(req, pose(REQUESTED, dx=10.0))
    assert near.pck == 1.0 and near.mean_distance == pytest.approx(10.0)
    far = quality.pose_fidelity(req, pose(REQUESTED, dx=12.0))  # beyond 5 % of the diagonal
    assert far.pck == 0.0 and far.mean_distance == pytest.approx(12.0)
    half = {i: p for i, p in list(REQUESTED.items())[:3]}  # the detector finds 3 of 6 points
    partial = quality.pose_fidelity(req, pose(half))
    assert partial.pck == 0.5 and partial.found == 3
    assert quality.pose_fidelity(req, Pose((), SIZE)).pck == 0.0  # nobody detected


def test_pck_pairs_people_and_scales_a_detection_on_another_canvas():
    other = {i: (x + 60, y) for i, (x, y) in REQUESTED.items() if x + 60 < 200}
    req = Pose((Person(body(REQUESTED)), Person(body(other))), SIZE)
    # Detected in the opposite order, on a canvas twice as large.
    det = Pose((Person(body({i: (2 * x, 2 * y) for i, (x, y) in other.items()})),
                Person(body({i: (2 * x, 2 * y) for i, (x, y) in REQUESTED.items()}))), (400, 200))
    score = quality.pose_fidelity(req, det)
    assert score.pck == 1.0 and score.mean_distance == pytest.approx(0.0)


class StubDetector:
    """Stands in for pose_sources.get_detector(...): answers prepared poses in call order."""

    name = "stub"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def detect(self, image):
        assert isinstance(image, Image.Image)
        self.calls += 1
        return self.answers.pop(0)


# ------------------------------------------------------------------ job folders


def make_job(tmp_path, frames, poses=None, with_decode=False, masks=None):
    """A finished job folder the way the animate flow leaves it (frames, job.json, result.json)."""
    job_dir = tmp_path / "out" / "0123456789abcdef"
    inversion = tmp_path / "out" / "inversions" / "fedcba9876543210"
    (job_dir / "frames").mkdir(parents=True)
    inversion.mkdir(parents=True)
    paths = []
    for i, f in enumerate(frames):
        p = job_dir / "frames" / f"frame_{i:04d}.png"
        Image.fromarray(f).save(p)
        paths.append(str(p))
    Image.fromarray(frames[0]).save(inversion / "source.png")
    if with_decode:
        Image.fromarray(shifted(frames[0], 10)).save(job_dir / "source_decode.png")
    if poses is not None:
        (job_dir / "poses").mkdir()
        for i, p in enumerate(poses):
            p.to_json(job_dir / "poses" / f"pose_{i:04d}.json")
    if masks is not None:
        (job_dir / "masks").mkdir()
        Image.fromarray(masks.astype(np.uint8) * 255).save(job_dir / "masks" / "source.png")
    job = {"source": {"image": str(inversion / "source.png"), "prompt": "a cat"},
           "frames": {"prompts": ["a cat"] * len(frames)}}
    write_json_atomic(job_dir / "job.json", {"job_hash": "0123456789abcdef" * 4, "job": job})
    write_json_atomic(job_dir / "result.json", {
        "job_hash": "0123456789abcdef" * 4, "job_dir": str(job_dir), "frame_count": len(frames), "frames": paths,
        "inversion_dir": str(inversion), "outputs": {},
    })
    return job_dir


def test_job_metrics_of_a_translated_sequence(tmp_path):
    frames = translated(4, step=3)
    job_dir = make_job(tmp_path, frames, with_decode=True)
    m = quality.compute_job_metrics(job_dir)
    assert [r.index for r in m.frames] == [0, 1, 2, 3] and m.frames[0].file == "frames/frame_0000.png"
    assert [(p.first, p.second) for p in m.pairs] == [(0, 1), (1, 2), (2, 3)]
    assert m.summary.warp_error < 1.0 < 10.0 < m.summary.frame_difference
    assert m.frames[0].appearance_emd == 0.0 and m.frames[0].appearance_region == "frame"
    expected_psnr = quality.psnr(frames[0], shifted(frames[0], 10))
    assert m.summary.source_psnr_db == pytest.approx(expected_psnr)
    assert set(m.not_measured) == {"background_ssim", "pose"}
    assert m.not_measured["pose"] == "the job has no poses"
    assert (m.width, m.height, m.job_hash) == (64, 64, "0123456789abcdef" * 4)


def test_job_metrics_with_poses_and_a_stub_detector(tmp_path):
    size = (64, 64)  # diagonal 90.5 px -> 4.5 px
    pts = {0: (32, 10), 1: (32, 20), 2: (22, 20), 5: (42, 20)}
    requested = [pose(pts, size) for _ in range(3)] + [Pose((), size)]  # the last frame requests nobody
    detector = StubDetector([pose(pts, size), pose(pts, size, dx=6.0), Pose((), size)])
    job_dir = make_job(tmp_path, translated(4), poses=requested)
    m = quality.compute_job_metrics(job_dir, detector=detector)
    assert detector.calls == 3
    assert [r.pose_pck for r in m.frames] == [1.0, 0.0, 0.0, None]
    assert [r.pose_points for r in m.frames] == [4, 4, 4, None]
    assert m.summary.pose_pck == pytest.approx(4 / 12)
    assert m.summary.pose_mean_distance_px == pytest.approx(3.0)  # 4 points at 0 px, 4 at 6 px
    assert "pose" not in m.not_measured and m.method["detector"] == "stub"


def test_pose_not_measured_without_a_detector(tmp_path, monkeypatch):
    size = (64, 64)
    job_dir = make_job(tmp_path, translated(2), poses=[pose({0: (30, 30)}, size)] * 2)
    monkeypatch.setattr(measure, "load_pose_detector", lambda kind, folder: (None, "no mediapipe pose detector (test)"))
    m = quality.compute_job_metrics(job_dir)
    assert m.summary.pose_pck is None and m.not_measured["pose"] == "no mediapipe pose detector (test)"
    assert all(r.pose_pck is None for r in m.frames)


def test_load_pose_detector_reports_why_not():
    detector, reason = quality.load_pose_detector("openpose", "/nonexistent/weights")
    assert detector is None and "/nonexistent/weights" in reason


def test_job_metrics_with_a_subject_mask_in_the_job_folder(tmp_path):
    frames = translated(2, step=0)
    frames[1] = frames[1].copy()
    frames[1][:, 32:] = shifted(texture(seed=7)[:64, 32:64], 60)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    m = quality.compute_job_metrics(make_job(tmp_path, frames, masks=left))
    assert m.frames[1].appearance_region == "subject" and m.frames[1].appearance_emd == 0.0
    assert m.frames[1].background_ssim < 0.5 and m.frames[0].background_ssim == pytest.approx(1.0)
    assert "background_ssim" not in m.not_measured


def test_metrics_json_round_trip_and_stable_schema(tmp_path):
    job_dir = make_job(tmp_path, translated(3))
    m = quality.compute_job_metrics(job_dir)
    path = quality.write_metrics(job_dir, m)
    assert path == job_dir / "metrics.json" and path.parent == (job_dir / "result.json").parent
    doc = json.loads(path.read_text())
    # The schema other tools read: renaming a key is a version bump.
    assert doc["version"] == quality.METRICS_VERSION == 1
    assert set(doc) == {"version", "job_dir", "job_hash", "width", "height", "frames", "pairs", "wrap_pair",
                        "summary", "not_measured", "method", "seconds"}
    assert set(doc["frames"][0]) == {"index", "file", "appearance_emd", "appearance_bhattacharyya",
                                     "appearance_region", "background_ssim", "pose_pck", "pose_mean_distance_px",
                                     "pose_points", "interpolated", "between", "t"}
    assert set(doc["pairs"][0]) == {"first", "second", "warp_error", "frame_difference", "consistent_fraction"}
    assert set(doc["summary"]) == {"frames", "warp_error", "frame_difference", "appearance_emd",
                                   "appearance_bhattacharyya", "appearance_region", "background_ssim", "pose_pck",
                                   "pose_mean_distance_px", "source_psnr_db"}
    assert quality.read_metrics(job_dir) == m


@pytest.mark.parametrize("loop,wrap", [("none", None), ("crossfade", (3, 0)), ("pingpong", (1, 0))])
def test_metrics_mark_inbetweens_and_measure_the_wrap_around_pair(tmp_path, loop, wrap):
    from flows.jobdir.stitch import stitch_outputs

    frames = translated(4, step=3)
    job_dir = make_job(tmp_path, frames)
    plain = quality.compute_job_metrics(job_dir)
    assert plain.wrap_pair is None and all(r.interpolated is None for r in plain.frames)  # stitched before playback.json
    paths = [job_dir / "frames" / f"frame_{i:04d}.png" for i in range(4)]
    stitch_outputs(paths, job_dir, fps=4, interpolate=2, loop=loop, mp4=False)
    m = quality.compute_job_metrics(job_dir)
    shown = [(r.index, r.interpolated, r.between, r.t) for r in m.frames]
    expected = [(0, False, None, None), (0, True, [0, 1], 0.5), (1, False, None, None), (1, True, [1, 2], 0.5),
                (2, False, None, None), (2, True, [2, 3], 0.5), (3, False, None, None)]
    if loop == "crossfade":
        expected.append((3, True, [3, 0], 0.5))
    assert shown == expected
    middle = m.frames[1]
    assert middle.file == "inbetweens/between_0000_0001_1of2.png" and middle.appearance_emd is not None
    assert middle.pose_pck is None
    # The summary stays the rendered frames' own, comparable with jobs without in-betweens.
    assert m.summary == plain.summary
    assert [(p.first, p.second) for p in m.pairs] == [(0, 1), (1, 2), (2, 3)]
    if wrap is None:
        assert m.wrap_pair is None
    else:
        assert (m.wrap_pair.first, m.wrap_pair.second) == wrap
        first, second = frames[wrap[0]], frames[wrap[1]]
        assert m.wrap_pair.warp_error == pytest.approx(quality.pair_flicker(first, second).warp_error)
        if loop == "crossfade":  # frames 3 -> 0 are 9 px apart, 0 -> 1 only 3
            assert m.wrap_pair.frame_difference > m.pairs[0].frame_difference
    assert quality.JobMetrics.model_validate_json(m.model_dump_json()) == m
    table = metrics_table(m)  # the UI's table: an in-between has no flicker of its own
    assert table[1]["Frame"] == "0→1 at 0.50 (in-between)" and table[1]["Flicker (/255)"] == "— (in-between)"
    assert table[0]["Flicker (/255)"] != table[1]["Flicker (/255)"] and table[2]["Frame"] == "1"


def test_infinite_psnr_survives_the_round_trip(tmp_path):
    frames = translated(2)
    job_dir = make_job(tmp_path, frames)
    Image.fromarray(frames[0]).save(job_dir / "source_decode.png")  # a perfect reconstruction
    m = quality.compute_job_metrics(job_dir)
    assert m.summary.source_psnr_db == math.inf
    quality.write_metrics(job_dir, m)
    assert quality.read_metrics(job_dir).summary.source_psnr_db == math.inf


def test_summary_line():
    job_dir_metrics = quality.JobMetrics(
        job_dir="/x", width=8, height=8, frames=[], pairs=[],
        summary=quality.MetricsSummary(frames=3, warp_error=1.234, frame_difference=9.87, appearance_emd=2.5,
                                       appearance_region="subject", background_ssim=0.9, pose_pck=0.75,
                                       pose_mean_distance_px=4.25, source_psnr_db=31.04),
        not_measured={"pose": "x"},
    )
    line = quality.summary_line(job_dir_metrics)
    assert line == ("metrics: 3 frames | warp error 1.23 (frame diff 9.87) /255 | colour distance 2.50 Lab (subject) | "
                    "background SSIM 0.900 | PCK@0.05 0.75 (mean 4.2 px) | source PSNR 31.0 dB | not measured: pose")


def test_not_a_finished_job(tmp_path):
    with pytest.raises(quality.NotAFinishedJob, match="no result.json"):
        quality.compute_job_metrics(tmp_path)
    job_dir = make_job(tmp_path, translated(2))
    (job_dir / "frames" / "frame_0001.png").unlink()
    with pytest.raises(quality.NotAFinishedJob, match="2 frames, 1 are in frames/"):
        quality.compute_job_metrics(job_dir)


def test_cli_metrics_writes_and_prints_the_summary(tmp_path, capsys):
    from flows.cli import main

    job_dir = make_job(tmp_path, translated(3))
    assert main(["metrics", str(job_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("metrics: 3 frames | warp error ")
    assert quality.read_metrics(job_dir).summary.frames == 3
    assert main(["metrics", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cli_metrics_rejects_a_folder_that_is_not_a_finished_job(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "frames").mkdir()
    assert main(["metrics", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a finished job folder (no result.json)" in err
