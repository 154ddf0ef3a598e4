"""Iterating on an animation: each frame is rendered once, by its content key, whatever job asks.

Every test counts the frames actually rendered (the result's ``frames_rendered`` and the engine's
UNet samples), on the tiny checkpoint at 64x64 and 2 steps.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import AnimationJob, animate
from flows.job.files import finished_result
from flows.job.frame_selection import parse_frames, select_frames
from flows.job.model import JobInputError
from flows.job.plan import plan_job
from flows.jobdir.layout import FrameStore, VersionsFolder, folder_name

from conftest_jobs import cat, tiny_job  # noqa: F401 - cat is a fixture

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROMPTS = [f"a photo of a cat, pose {i}" for i in range(6)]


def job(cat, out, prompts=PROMPTS, **sections) -> AnimationJob:
    return tiny_job(cat, out, prompts, **sections)


def run(j, **kwargs):
    state = animate(j, return_state=True, **kwargs)
    assert state.is_completed(), state
    return state.result()


def rendered(result) -> int:
    """Frames rendered, checked against the engine's own count of frame UNet samples."""
    samples = result.unet_calls.get("frame_samples", 0)
    per_frame = samples // max(result.frames_rendered, 1)
    assert samples == result.frames_rendered * per_frame
    return result.frames_rendered


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def base(cat, tmp_path_factory):
    out = tmp_path_factory.mktemp("iterate") / "out"
    first = run(job(cat, out))
    assert rendered(first) == 6
    return out, first


def test_editing_one_prompt_renders_that_frame_only(cat, base):
    out, first = base
    prompts = list(PROMPTS)
    prompts[3] = "a photo of a cat jumping high"
    edited = run(job(cat, out, prompts))
    assert rendered(edited) == 1 and edited.frames_skipped == 5
    assert edited.job_hash != first.job_hash  # a new version of the job, in its own folder
    for i in (0, 1, 2, 4, 5):  # the shared frames are the very same pixels
        assert np.array_equal(pixels(edited.frames[i]), pixels(first.frames[i]))
    assert not np.array_equal(pixels(edited.frames[3]), pixels(first.frames[3]))


def test_appending_prompts_renders_only_the_new_frames(cat, base):
    out, _ = base
    longer = run(job(cat, out, PROMPTS + ["a photo of a cat, pose 6", "a photo of a cat, pose 7"]))
    assert rendered(longer) == 2 and longer.frame_count == 8


def test_changing_the_fps_renders_nothing(cat, base):
    out, first = base
    again = run(job(cat, out, output={"fps": 12}))
    assert rendered(again) == 0 and again.job_hash == first.job_hash
    assert sum(again.unet_calls.values()) == 0


def test_a_setting_every_frame_depends_on_renders_every_frame(cat, base):
    out, _ = base
    assert rendered(run(job(cat, out, settings={"guidance_scale": 5.0}))) == 6


def test_identical_frames_render_once(cat, tmp_path):
    result = run(job(cat, tmp_path / "out", ["a photo of a cat"] * 3 + ["a photo of a dog"]))
    assert rendered(result) == 2 and result.frame_count == 4
    assert np.array_equal(pixels(result.frames[0]), pixels(result.frames[2]))


def test_anchor_mode_follows_the_anchor_frame(cat, tmp_path):
    out = tmp_path / "out"
    anchored = {"cross_frame": "anchor", "anchor_frame": 0}
    assert rendered(run(job(cat, out, PROMPTS[:4], settings=anchored))) == 4
    # Another prompt for the anchor frame: every frame attends to it, so every frame renders.
    assert rendered(run(job(cat, out, ["a photo of a cat yawning"] + PROMPTS[1:4], settings=anchored))) == 4
    # Another anchor frame: the same.
    assert rendered(run(job(cat, out, PROMPTS[:4], settings={**anchored, "anchor_frame": 2}))) == 4
    # A frame that is not the anchor: that frame alone.
    assert rendered(run(job(cat, out, PROMPTS[:3] + ["a photo of a cat yawning"], settings=anchored))) == 1


def test_anchor_settings_do_not_matter_without_anchor_mode(cat, tmp_path):
    out = tmp_path / "out"
    a = plan_job(job(cat, out), write=False)
    b = plan_job(job(cat, out, settings={"anchor_frame": 3, "anchor_weight": 0.5}), write=False)
    assert [f.key for f in a.frames] == [f.key for f in b.frames]


def test_two_jobs_share_their_common_frames(cat, tmp_path):
    out = tmp_path / "out"
    assert rendered(run(job(cat, out, PROMPTS[:4], name="walk-a"))) == 4
    other = run(job(cat, out, PROMPTS[:3] + ["a photo of a cat asleep", "a photo of a cat awake"], name="walk-b"))
    assert rendered(other) == 2
    store = FrameStore.of(out)
    assert len(store.entries()) == 6  # every frame once
    first_frame = Path(other.frames[0])
    if first_frame.stat().st_nlink > 1:  # presented as a hard link: the bytes exist once
        assert os.path.samefile(first_frame, store.frame(plan_job(job(cat, out, PROMPTS[:4]), write=False).frames[0].key))


def test_a_corrupt_store_entry_renders_again(cat, tmp_path):
    out = tmp_path / "out"
    first = run(job(cat, out, PROMPTS[:3]))
    plan = plan_job(job(cat, out, PROMPTS[:3]), write=False)
    entry = FrameStore.of(out).frame(plan.frames[1].key)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))  # in place: the job folder's hard link sees it too
    again = run(job(cat, out, PROMPTS[:3]))
    assert rendered(again) == 1
    assert np.abs(pixels(again.frames[1]) - pixels(first.frames[1])).max() <= 1


def gif_frame_count(path) -> int:
    with Image.open(path) as im:
        return im.n_frames


def test_a_subset_previews_then_the_full_run_renders_the_rest(cat, tmp_path):
    out = tmp_path / "out"
    preview = run(job(cat, out), frames=[0, 4])
    assert rendered(preview) == 2 and preview.missing_frames == [1, 2, 3, 5]
    assert [Path(p).name for p in preview.frames] == ["frame_0000.png", "frame_0004.png"]
    assert gif_frame_count(preview.gif) == 2  # the preview stitches what exists
    assert finished_result(job(cat, out)) is None  # not finished: the inbox would still render it
    full = run(job(cat, out))
    assert rendered(full) == 4 and full.missing_frames == [] and gif_frame_count(full.gif) == 6
    assert finished_result(job(cat, out)) is not None


def test_a_range_retried_with_new_seeds_renders_that_range(cat, tmp_path):
    out = tmp_path / "out"
    noise = {"frame_start": "noise"}
    first = run(job(cat, out, settings=noise))
    assert rendered(first) == 6
    seeds = {"overrides": [{"index": i, "seed": 100 + i} for i in range(3, 6)]}
    retry = run(job(cat, out, settings=noise, frames=seeds), frames=parse_frames("3-5"))
    assert rendered(retry) == 3 and retry.missing_frames == []  # the others are presented from the store
    for i in range(3):
        assert np.array_equal(pixels(retry.frames[i]), pixels(first.frames[i]))


def test_a_bad_frame_selection_fails_as_an_invalid_job(cat, tmp_path):
    state = animate(job(cat, tmp_path / "out"), frames=[0, 9], return_state=True)
    assert state.is_failed()
    assert "Invalid job: frames: frame 9 does not exist; the job has 6 frames (0-5)" in state.message
    assert not (tmp_path / "out" / "inversions").exists()  # refused before any heavy work


@pytest.mark.parametrize("text, expected", [("0,4,8", [0, 4, 8]), ("3-5", [3, 4, 5]), ("7, 1-2,1", [7, 1, 2])])
def test_frame_selections_parse(text, expected):
    assert parse_frames(text) == expected


@pytest.mark.parametrize("text, message", [("a", "'a' is not a frame index"), ("5-3", "runs backwards; write 3-5"),
                                           (",", "names no frame")])
def test_bad_frame_selections_name_the_field(text, message):
    with pytest.raises(JobInputError, match=message) as info:
        parse_frames(text)
    assert info.value.field == "frames"


def test_select_frames_checks_the_range():
    assert select_frames("2,0", 3) == [0, 2] and select_frames(None, 3) is None
    with pytest.raises(JobInputError, match="frame 3 does not exist; the job has 3 frames"):
        select_frames([3], 3)


def test_versions_of_a_named_job(cat, tmp_path):
    out = tmp_path / "out"
    first = run(job(cat, out, PROMPTS[:2], name="astronaut-walk"))
    second = run(job(cat, out, PROMPTS[:2], settings={"guidance_scale": 5.0}, name="astronaut-walk"))
    versions = VersionsFolder.of(out, "astronaut-walk")
    assert versions.latest.resolve() == Path(second.job_dir).resolve()
    assert second.previous_versions == [first.job_hash]
    doc = json.loads((Path(second.job_dir) / "result.json").read_text())
    assert doc["previous_versions"] == [first.job_hash]
    assert Path(first.job_dir, "animation.gif").is_file()  # the previous result is kept
    again = run(job(cat, out, PROMPTS[:2], name="astronaut-walk"))  # back to the first settings
    assert again.job_hash == first.job_hash and rendered(again) == 0
    assert versions.latest.resolve() == Path(first.job_dir).resolve()
    assert again.previous_versions == [second.job_hash]
    assert Path(second.job_dir).name == folder_name(second.job_hash)


def test_flow_runs_are_named_after_the_job(cat, tmp_path):
    state = animate(job(cat, tmp_path / "out", PROMPTS[:1], name="astronaut-walk"), return_state=True)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name.startswith("astronaut-walk-")


@pytest.mark.parametrize("name", ["inversions", "frame_store", "0123456789abcdef"])
def test_a_job_name_cannot_take_a_folder_of_the_output(cat, tmp_path, name):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="keeps for itself"):
        job(cat, tmp_path, name=name)


def test_frames_appear_as_each_chunk_finishes(cat, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result = animate(job(cat, tmp_path / "out", PROMPTS[:4], name="walk"))
    key = f"frames-so-far-walk-{folder_name(result.job_hash)}"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    versions = sorted(artifacts, key=lambda a: a.created)
    # Two chunks of two frames: one version each, the second showing all four frames.
    assert [v.data.splitlines()[0] for v in versions] == ["# Frames so far: 2 of 4", "# Frames so far: 4 of 4"]
    assert all(f"frame_{i:04d}.png" in versions[-1].data for i in range(4))
    assert versions[-1].data.count("![frame ") == 4 and versions[0].data.count("![frame ") == 2


def test_the_form_offers_the_frame_selection():
    from prefect.utilities.callables import parameter_schema

    from flows.animation import animate as flow

    field = parameter_schema(flow.fn).properties["frames"]
    assert "quick preview" in field["description"]
    assert {"type": "array", "items": {"type": "integer"}} in field["anyOf"]


def test_a_sweep_publishes_no_frames_so_far_page(cat, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.sweep import sweep

    state = sweep(job(cat, tmp_path / "out", PROMPTS[:2], name="swept"), grid={"settings.guidance_scale": [2.0, 3.0]},
                  return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts() if a.key}
    assert not any(k.startswith("frames-so-far-swept") for k in keys)
    assert any(k.startswith("sweep-") and "swept" in k for k in keys)  # the sweep's own artifacts are there
