"""output.interpolate and output.loop: the played order, exact GIF/MP4 frame counts, the settings.

The frames are views of a real photo panned a few pixels apart, written with their digests as
the render task writes them, so the stitch runs as the flow runs it (verified frames).
"""

import json
import warnings

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage import data

from flows.job.model import MovedFieldWarning, OutputSpec
from flows.jobdir import stitch
from flows.jobdir.inbetween import interpolate
from flows.jobdir.layout import JobFolder
from flows.jobdir.manifest import write_frame

N = 4


def panned_frames(n=N, size=64, step=3):
    photo = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    return [photo[32:32 + size, 20 + step * i:20 + step * i + size].copy() for i in range(n)]


@pytest.fixture
def job(tmp_path):
    frames = panned_frames()
    paths = [write_frame(Image.fromarray(f), tmp_path, i) for i, f in enumerate(frames)]
    return tmp_path, frames, paths


def gif_frames(path):
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append((np.asarray(im.convert("RGB")).astype(int), im.info.get("duration")))
        return out


def mp4_frames(path):
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return reader.get_meta_data()["fps"], [f.astype(int) for f in reader]
    finally:
        reader.close()


@pytest.mark.parametrize("n,k,loop,count", [
    (4, 1, "none", 4), (4, 3, "none", 10),            # n + (n-1)(k-1)
    (4, 1, "pingpong", 6), (4, 2, "pingpong", 12),    # 2(n-1)k
    (4, 2, "crossfade", 8), (4, 3, "crossfade", 12),  # nk
    (1, 2, "pingpong", 1), (2, 1, "pingpong", 2), (1, 2, "crossfade", 2),
])
def test_playback_counts(n, k, loop, count):
    order = stitch.playback_order(n, k, loop)
    assert len(order) == count
    assert order[0] == stitch.Played(0)
    rendered = [p.index for p in order if not p.interpolated]
    if loop == "pingpong" and n > 2:
        assert rendered == list(range(n)) + list(range(n - 2, 0, -1))
    else:
        assert rendered == list(range(n))
    if loop == "crossfade":
        assert [(p.index, p.to, p.t) for p in order[-(k - 1):]] == [(n - 1, 0, s / k) for s in range(1, k)]


def test_pingpong_plays_the_way_back_in_reverse():
    order = stitch.playback_order(3, 2, "pingpong")
    assert order == [stitch.Played(0), stitch.Played(0, 1, 1, 2), stitch.Played(1), stitch.Played(1, 2, 1, 2),
                     stitch.Played(2), stitch.Played(1, 2, 1, 2), stitch.Played(1), stitch.Played(0, 1, 1, 2)]
    assert len(stitch.distinct(order)) == 5


def test_bad_playback_settings_are_refused():
    with pytest.raises(ValueError, match="interpolate: 0"):
        stitch.playback_order(3, 0)
    with pytest.raises(ValueError, match="loop: 'bounce'"):
        stitch.playback_order(3, 2, "bounce")


@pytest.mark.parametrize("k,loop", [(2, "none"), (3, "pingpong"), (2, "crossfade")])
def test_gif_and_mp4_hold_exactly_the_played_frames(job, k, loop):
    job_dir, frames, paths = job
    out = stitch.stitch_outputs(paths, job_dir, fps=4, interpolate=k, loop=loop, verify_frames=True)
    order = stitch.playback_order(N, k, loop)
    gif = gif_frames(out["gif"])
    assert len(gif) == len(order)
    assert {d for _, d in gif} == {stitch.gif_frame_duration_ms(4 * k)}  # fps x k: the same pace
    fps, mp4 = mp4_frames(out["mp4"])
    assert fps == pytest.approx(4 * k) and len(mp4) == len(order)
    folder = JobFolder(job_dir)
    for (picture, _), played, video in zip(gif, order, mp4):
        if played.interpolated:
            want = np.asarray(Image.open(folder.inbetween(played.index, played.to, played.step, k))).astype(int)
        else:
            want = frames[played.index].astype(int)
        assert np.abs(picture - want).mean() < 3 and np.abs(video - want).mean() < 6
    # Derived frames stay out of the frame cache.
    assert sorted(p.name for p in folder.frames_dir.glob("*.png")) == [p.name for p in paths]
    assert not [p for p in job_dir.rglob(".*")], "temporary files left behind"


def test_inbetweens_lie_between_their_frames(job):
    job_dir, frames, paths = job
    stitch.stitch_outputs(paths, job_dir, fps=4, interpolate=2, loop="crossfade", mp4=False)
    folder = JobFolder(job_dir)
    middle = np.asarray(Image.open(folder.inbetween(1, 2, 1, 2)))
    assert np.array_equal(middle, interpolate(frames[1], frames[2], 0.5))
    wrap = np.asarray(Image.open(folder.inbetween(3, 0, 1, 2)))  # the crossfade: last -> first
    assert np.array_equal(wrap, interpolate(frames[3], frames[0], 0.5))


def test_missing_inbetweens_are_made_again_and_playback_fps_wins(job):
    job_dir, _, paths = job
    stitch.stitch_outputs(paths, job_dir, fps=4, interpolate=2, mp4=False)
    folder = JobFolder(job_dir)
    for p in folder.inbetweens_dir.iterdir():
        p.unlink()
    out = stitch.stitch_outputs(paths, job_dir, fps=4, interpolate=2, playback_fps=5, mp4=False)
    assert len(list(folder.inbetweens_dir.iterdir())) == N - 1
    assert {d for _, d in gif_frames(out["gif"])} == {200}


def test_contact_sheet_marks_inbetweens_and_playback_json_lists_the_played_files(job):
    job_dir, frames, paths = job
    out = stitch.stitch_outputs(paths, job_dir, fps=4, interpolate=2, loop="pingpong", mp4=False)
    sheet = np.asarray(Image.open(out["contact_sheet"]))
    # 7 distinct pictures (4 rendered, 3 in-between), 4 per row: each row starts on a rendered frame.
    assert sheet.shape == (2 * 64, 4 * 64, 3)
    assert np.array_equal(sheet[64:, :64], frames[2])
    assert np.array_equal(sheet[:64, :64], frames[0])  # a rendered frame as it is
    assert tuple(sheet[0, 64 + 32]) == stitch.INTERPOLATED_MARK  # the in-between after it, framed
    assert tuple(sheet[32, 64 + 63]) == stitch.INTERPOLATED_MARK
    played = json.loads(JobFolder(job_dir).playback.read_text())
    assert (played["fps"], played["interpolate"], played["loop"], played["count"]) == (8, 2, "pingpong", 12)
    assert [e["interpolated"] for e in played["frames"][:3]] == [False, True, False]
    assert played["frames"][1] == {"file": "inbetweens/between_0000_0001_1of2.png", "index": 0, "to": 1, "t": 0.5,
                                   "interpolated": True}
    assert played["frames"][-1]["file"] == played["frames"][1]["file"]  # the way back reuses the way forward


def test_identical_frames_give_identical_inbetweens_in_the_gif(tmp_path):
    frame = panned_frames(1)[0]
    paths = [write_frame(Image.fromarray(frame), tmp_path, i) for i in range(3)]
    out = stitch.stitch_outputs(paths, tmp_path, fps=4, interpolate=3, mp4=False, verify_frames=True)
    gif = gif_frames(out["gif"])
    assert len(gif) == 7 and all(np.array_equal(g, gif[0][0]) for g, _ in gif)


def test_a_sweep_cell_gif_interpolates_between_its_sampled_frames(job, tmp_path):
    job_dir, frames, paths = job
    cell = [paths[0], paths[3]]  # a sweep renders some frames only
    gif = stitch.write_playback_gif([Image.fromarray(frames[0]), Image.fromarray(frames[3])], cell, job_dir,
                                    tmp_path / "cell.gif", fps=8, interpolate=2, loop="pingpong")
    assert len(gif_frames(gif)) == 4  # 0, 0-3, 3, 3-0
    assert JobFolder(job_dir).inbetween(0, 3, 1, 2).is_file()


# ------------------------------------------------------------------ the settings


def test_output_settings_defaults_and_frame_rate():
    out = OutputSpec()
    assert (out.interpolate, out.loop, out.gif_loops, out.playback_fps) == (1, "none", 0, None)
    assert OutputSpec(fps=8, interpolate=3).frame_rate == 24
    assert OutputSpec(fps=8, interpolate=3, playback_fps=12).frame_rate == 12


def test_an_old_numeric_loop_is_the_gif_loop_count_with_a_warning():
    with pytest.warns(MovedFieldWarning, match="output.loop as a number .* moved to output.gif_loops"):
        out = OutputSpec.model_validate({"loop": 3})
    assert (out.gif_loops, out.loop) == (3, "none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OutputSpec.model_validate({"loop": "pingpong"}).loop == "pingpong"
    with pytest.raises(ValidationError, match="output.gif_loops is also set"):
        OutputSpec.model_validate({"loop": 3, "gif_loops": 1})


@pytest.mark.parametrize("given,message", [
    ({"loop": "crossfade"}, "output.loop: crossfade .* set output.interpolate to 2 or more"),
    ({"fps": 20, "interpolate": 4}, "output.interpolate: 20 fps x 4 = 80 frames a second"),
    ({"interpolate": 0}, "interpolate"),
    ({"interpolate": 9}, "interpolate"),
    ({"loop": "bounce"}, "loop"),
    ({"loop": -1}, "loop"),
])
def test_bad_output_settings_name_the_field(given, message):
    with pytest.raises(ValidationError, match=message):
        OutputSpec.model_validate(given)
    OutputSpec.model_validate({"fps": 20, "interpolate": 4, "playback_fps": 40})  # a given rate is fine


def test_interpolate_and_loop_are_sweepable_other_output_settings_not():
    from flows.job.model import AnimationJob
    from flows.job.sweep_axes import SweepError, parse_axes

    spec = parse_axes(None, ["output.interpolate=1,2", "output.loop=none,pingpong"], AnimationJob)
    assert [(a.key, a.values) for a in spec.axes] == [("output.interpolate", [1, 2]),
                                                      ("output.loop", ["none", "pingpong"])]
    with pytest.raises(SweepError, match="output.fps: output does not change the frames"):
        parse_axes(None, ["output.fps=8,12"], AnimationJob)
    with pytest.raises(SweepError, match="output.interpolate"):
        parse_axes(None, ["output.interpolate=1,20"], AnimationJob)


def test_the_job_schema_and_form_carry_the_new_settings():
    from flows.job.model import AnimationJob

    schema = AnimationJob.model_json_schema()
    output = schema["$defs"]["OutputSpec"]["properties"]
    assert output["loop"]["enum"] == ["none", "pingpong", "crossfade"]
    assert output["interpolate"]["minimum"] == 1 and output["interpolate"]["maximum"] == 8
    assert "gif_loops" in output and "playback_fps" in output
    assert all(output[k].get("description") for k in ("loop", "interpolate", "gif_loops", "playback_fps"))


# ------------------------------------------------------------------ a sweep over them


@pytest.mark.usefixtures("prefect_harness")
def test_a_sweep_over_interpolate_shows_the_inbetweens_in_the_cell_gif(tmp_path):
    from flows import AnimationJob
    from flows.sweep import sweep

    Image.fromarray(panned_frames(1, size=64)[0]).save(tmp_path / "src.png")
    job = AnimationJob.model_validate({
        "source": {"image": str(tmp_path / "src.png"), "prompt": "a photo of an astronaut"},
        "frames": {"prompts": ["a photo of an astronaut sitting", "a photo of an astronaut standing",
                               "a photo of an astronaut jumping"]},
        "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "fps": 5, "loop": "pingpong"},
        "execution": {"chunk_size": 3, "batch_size": 3},
    })
    state = sweep(job, grid={"output.interpolate": [1, 2]}, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.frames_rendered == 3  # the two cells share their frames: only the GIF differs
    assert not any("changes nothing" in note for note in result.notes)  # it changes how they play
    counts = [len(gif_frames(cell.gif)) for cell in result.cells]
    assert counts == [4, 8]  # pingpong of 3 frames: 0 1 2 1, and with an in-between after each
    (k1, k2) = [gif_frames(cell.gif) for cell in result.cells]
    assert {d for _, d in k2} == {stitch.gif_frame_duration_ms(10)} and {d for _, d in k1} == {200}
