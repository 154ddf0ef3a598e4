"""The animate flow on the tiny checkpoint under prefect_test_harness (64x64, 3 steps, 4 frames)."""

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import yaml
from PIL import Image

import flows.execution.rendering as rendering
from flows import AnimationJob, animate, task_runner_for
from flows.execution import worker_cache
from flows.deployments import animate_inbox
from flows.jobdir import frame_store
from flows.jobdir.frames_io import frame_path
from flows.jobdir.layout import FrameStore
from flows.ui.artifacts import md_text
from flows.jobdir.layout import folder_name
from flows.job.model import ModelSpec, RenderSettings
from flows.job.plan import ChunkRequest, EngineRequest, FramePlan
from flows.execution.worker_cache import EngineSlot

pytestmark = pytest.mark.usefixtures("prefect_harness")

STEPS = 3
PROMPTS = ["a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping", "a photo of a cat running"]
WALK = Path(__file__).resolve().parent.parent / "examples" / "poses" / "walk"


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("src") / "cat.png"
    # Mirrored: the inversion cache is keyed on image content and shared by the whole test
    # session, and other modules use the plain cat; this module counts a cold first inversion.
    Image.fromarray(data.chelsea()[:, ::-1]).resize((96, 64)).save(path)
    return path


def make_job(image, out, **sections) -> AnimationJob:
    data = {
        "source": {"image": str(image), "prompt": "a photo of a cat"},
        "frames": {"prompts": PROMPTS},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1},
        "output": {"folder": str(out), "fps": 5},
        "execution": {"chunk_size": 2, "batch_size": 2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return AnimationJob.model_validate(data)


def flow_run_id(state):
    return state.state_details.flow_run_id


def read_artifacts(run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def task_states(run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name: r.state.name for r in runs}


def gif_frames(path):
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append((np.asarray(im.convert("RGB")), im.info.get("duration")))
        return out, im.size, im.info.get("loop")


def png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def first_run(cat_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    job = make_job(cat_png, out / "out")
    state = animate(job, return_state=True)
    assert state.is_completed(), state
    return job, state, state.result()


def test_outputs_read_back(first_run):
    job, _, result = first_run
    assert result.frame_count == 4 and result.frames_rendered == 4 and result.frames_skipped == 0
    assert Path(result.job_dir).name == folder_name(result.job_hash)
    for i, path in enumerate(result.frames):
        assert Path(path) == frame_path(result.job_dir, i)
        assert Image.open(path).size == (64, 64)
    frames, size, loop = gif_frames(result.gif)
    assert len(frames) == 4 and size == (64, 64) and loop == 0
    assert [d for _, d in frames] == [200] * 4  # 5 fps
    reader = imageio.get_reader(result.mp4, format="FFMPEG")
    meta = reader.get_meta_data()
    decoded = [f for f in reader]
    reader.close()
    assert meta["fps"] == 5 and meta["codec"] == "h264" and tuple(meta["size"]) == (64, 64)
    assert len(decoded) == 4 and decoded[0].shape == (64, 64, 3)
    assert Image.open(result.contact_sheet).size == (128, 128)
    assert result.side_by_side is None
    saved = json.loads((Path(result.job_dir) / "result.json").read_text())
    assert saved["job_hash"] == result.job_hash and saved["gif"] == result.gif
    calls = result.unet_calls
    assert calls["inversion_calls"] == STEPS and calls["frame_samples"] == 4 * 2 * STEPS
    assert calls["frame_calls"] == 2 * STEPS  # two batches of two frames
    assert not result.inversion_cached
    assert set(result.timings) == {"resolve", "invert", "render", "stitch", "total"}
    assert any("random weights" in note for note in result.notes)  # the tiny model says it draws noise
    metrics = json.loads(Path(result.metrics).read_text())
    assert Path(result.metrics) == Path(result.job_dir) / "metrics.json" and metrics["summary"]["frames"] == 4
    assert len(metrics["pairs"]) == 3 and metrics["summary"]["source_psnr_db"] > 0
    assert result.metrics_summary.startswith("metrics: 4 frames | warp error")


def test_artifacts(first_run):
    _, state, result = first_run
    artifacts = read_artifacts(flow_run_id(state))
    by_type = {}
    for art in artifacts:
        by_type.setdefault(art.type, []).append(art)
    key = folder_name(result.job_hash)
    (progress,) = by_type["progress"]
    assert progress.key == f"progress-{key}" and float(progress.data) == 100.0
    assert progress.description.endswith("100% (4/4 frames), done")
    tables = {a.key.split("-")[0]: a for a in by_type["table"]}
    metrics_rows = json.loads(tables["metrics"].data)
    assert [row["Frame"] for row in metrics_rows] == ["0", "1", "2", "3"]
    assert tables["metrics"].description.startswith(md_text(result.metrics_summary))
    rows = json.loads(tables["frames"].data)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["prompt"] == PROMPTS[2] and rows[2]["file"] == result.frames[2]
    assert {"pose", "seconds"} <= set(rows[0]) and all(r["status"] == "rendered" for r in rows)
    markdown = {a.key: a.data for a in by_type["markdown"]}  # link artifacts are markdown too
    assert result.gif in markdown[f"outputs-{key}"] and result.mp4 in markdown[f"outputs-{key}"]
    assert "animation.gif" in markdown[f"gif-{key}"] and "animation.mp4" in markdown[f"mp4-{key}"]


def test_rerun_renders_nothing(first_run):
    job, _, first = first_run
    mtimes = {p: Path(p).stat().st_mtime_ns for p in first.frames}
    state = animate(job, return_state=True)
    result = state.result()
    assert result.job_hash == first.job_hash
    assert result.frames_rendered == 0 and result.frames_skipped == 4
    assert all(v == 0 for v in result.unet_calls.values()), result.unet_calls
    assert result.inversion_cached
    assert {p: Path(p).stat().st_mtime_ns for p in result.frames} == mtimes  # frames not rewritten


def test_resume_after_a_crash_renders_only_missing_frames(first_run, tmp_path, monkeypatch):
    job, _, reference = first_run
    resumed_job = job.model_copy(update={"output": job.output.model_copy(update={"folder": tmp_path / "out"})})

    real = rendering.render_chunk_frames

    def crash_second_chunk(chunk, *args, **kwargs):  # frames 2, 3 "crash" before anything is written
        if chunk.index == 1:
            raise RuntimeError("worker lost (injected by the test)")
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(rendering, "render_chunk_frames", crash_second_chunk)
    state = animate(resumed_job, return_state=True)
    assert state.is_failed()
    assert "run the same job again" in str(state.result(raise_on_failure=False))
    (progress,) = [a for a in read_artifacts(flow_run_id(state)) if a.type == "progress"]
    assert "50% (2/4 frames), failed at chunk 2 of 2" in progress.description
    job_dir = tmp_path / "out" / folder_name(reference.job_hash)
    assert [frame_path(job_dir, i).is_file() for i in range(4)] == [True, True, False, False]
    assert not (job_dir / "animation.gif").exists() and not (job_dir / "result.json").exists()

    monkeypatch.setattr(rendering, "render_chunk_frames", real)
    result = animate(resumed_job, return_state=True).result()
    assert result.frames_rendered == 2 and result.frames_skipped == 2
    assert result.unet_calls["frame_samples"] == 2 * 2 * STEPS and result.unet_calls["inversion_calls"] == 0
    for mine, theirs in zip(result.frames, reference.frames):
        assert np.abs(png(mine) - png(theirs)).max() <= 1
    ours, _, _ = gif_frames(result.gif)
    theirs, _, _ = gif_frames(reference.gif)
    assert len(ours) == len(theirs) == 4
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for (a, _), (b, _) in zip(ours, theirs))
    mp4_a = [f.astype(int) for f in imageio.get_reader(result.mp4, format="FFMPEG")]
    mp4_b = [f.astype(int) for f in imageio.get_reader(reference.mp4, format="FFMPEG")]
    assert len(mp4_a) == len(mp4_b) == 4
    assert max(np.abs(a - b).mean() for a, b in zip(mp4_a, mp4_b)) < 2


@pytest.fixture
def three_poses(tmp_path):
    folder = tmp_path / "poses"
    folder.mkdir()
    for name in sorted(p.name for p in WALK.glob("*.json"))[:3]:
        shutil.copy(WALK / name, folder / name)
    return folder


def test_poses_drive_frames_with_side_by_side_preview(cat_png, tmp_path, three_poses):
    job = make_job(cat_png, tmp_path / "out",
                   frames={"prompts": ["a photo of a cat walking"],
                           "poses": {"kind": "openpose_json", "path": str(three_poses)}},
                   model={"model": "tiny", "controlnet": "tiny"})
    result = animate(job)
    assert result.frame_count == 3
    assert result.unet_calls["controlnet_calls"] > 0
    frames, size, _ = gif_frames(result.outputs["side_by_side_gif"])
    assert len(frames) == 3 and size == (128, 64)
    assert result.side_by_side == result.outputs["side_by_side_gif"]
    assert len(list((Path(result.job_dir) / "poses").glob("pose_*.png"))) == 3
    # The pose map is the left half of the preview.
    pose0 = png(Path(result.job_dir) / "poses" / "pose_0000.png")
    assert np.abs(frames[0][0][:, :64].astype(int) - pose0).mean() < 8


def test_prompt_pose_count_mismatch_fails_before_any_model_load(cat_png, tmp_path, three_poses):
    loads = worker_cache.pipeline_loads()
    job = make_job(cat_png, tmp_path / "out",
                   frames={"prompts": ["a cat", "a cat"], "poses": {"kind": "openpose_json", "path": str(three_poses)}},
                   model={"model": "tiny", "controlnet": "tiny"})
    state = animate(job, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("Invalid job: frames.prompts: 2 prompts for 3 poses")
    assert worker_cache.pipeline_loads() == loads
    assert not (tmp_path / "out").exists()


def test_synthesis_mode_generates_the_source(tmp_path):
    job = AnimationJob.model_validate({
        "source": {"prompt": "a photo of a cat", "seed": 1},
        "frames": {"prompts": ["a photo of a cat jumping", "a photo of a cat sitting"]},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "mp4": False},
    })
    result = animate(job)
    assert result.unet_calls["generation_calls"] > 0 and result.frame_count == 2
    assert result.mp4 is None and Path(result.gif).is_file()
    assert Image.open(Path(result.inversion_dir) / "source.png").size == (64, 64)


def test_inbox_renders_new_jobs_once_and_reports_bad_ones(cat_png, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(cat_png, inbox / "cat.png")
    good = {"source": {"image": "cat.png", "prompt": "a photo of a cat"},
            "frames": {"prompts": PROMPTS[:2]},
            "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1},
            "output": {"folder": "out", "fps": 4}}
    (inbox / "good.yaml").write_text(yaml.safe_dump(good))
    bad = {**good, "settings": {**good["settings"], "width": 100}}
    (inbox / "bad.yaml").write_text(yaml.safe_dump(bad))

    state = animate_inbox(inbox=str(inbox), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "bad.yaml" in message and "settings.width" in message
    results = list((inbox / "out").glob("*/result.json"))
    assert len(results) == 1  # the good job ran although the bad one failed

    (inbox / "bad.yaml").unlink()
    report = animate_inbox(inbox=str(inbox))
    assert report.rendered == [] and report.skipped == ["good.yaml"] and report.failed == {}
    (Path(results[0].parent) / "animation.gif").unlink()  # an output went missing: render (stitch) again
    report = animate_inbox(inbox=str(inbox))
    assert report.rendered == ["good.yaml"]


# ------------------------------------------------------------------ chunk rendering with a fake engine


class FakeStats:
    def __init__(self):
        self.frame_calls = 0

    def as_dict(self):
        return {"frame_calls": self.frame_calls}


class FakeEngine:
    device = "cpu"

    def __init__(self, ooms=0):
        self.ooms, self.batches, self.stats = ooms, [], FakeStats()

    def render(self, inv, source_prompt, frames, batch_size, anchor=None):
        import torch

        self.batches.append([f.prompt for f in frames])
        if self.ooms and len(frames) > 1:
            self.ooms -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.stats.frame_calls += 1
        return [Image.new("RGB", (64, 64), (int(f.prompt), 0, 0)) for f in frames]


@pytest.fixture
def fake_engine(monkeypatch):
    holder = {}

    def get_engine(model, config):
        return holder["slot"]

    monkeypatch.setattr(worker_cache, "get_engine", get_engine)
    monkeypatch.setattr(rendering, "load_inversion", lambda folder, device=None, logger=None: object())

    def install(engine):
        holder["slot"] = EngineSlot(engine)
        return engine

    return install


def chunk(tmp_path, indices, batch_size=4):
    request = EngineRequest(model=ModelSpec(model="tiny"),
                            settings=RenderSettings(width=64, height=64, steps=2, start_step=0))
    return ChunkRequest(index=0, job_dir=str(tmp_path), store_dir=str(tmp_path / "store"),
                        inversion_dir=str(tmp_path / "inv"), source_prompt="src",
                        frames=[FramePlan(index=i, prompt=str(i), key=f"{i:016x}") for i in indices],
                        batch_size=batch_size, engine=request)


def test_chunk_skips_frames_on_disk(tmp_path, fake_engine):
    engine = fake_engine(FakeEngine())
    store = FrameStore(tmp_path / "store")
    frame_store.put(store, f"{1:016x}", Image.new("RGB", (64, 64)))  # rendered before: in the store
    report = rendering.render_chunk_frames(chunk(tmp_path, [0, 1, 2]))
    assert frame_path(tmp_path, 1).is_file()  # presented in the job folder without rendering
    assert engine.batches == [["0", "2"]]
    assert report.rendered == [0, 2] and report.skipped == [1] and report.stats == {"frame_calls": 1}
    assert png(frame_path(tmp_path, 2))[0, 0, 0] == 2
    again = rendering.render_chunk_frames(chunk(tmp_path, [0, 1, 2]))
    assert again.rendered == [] and engine.batches == [["0", "2"]]


def test_chunk_out_of_memory_retries_once_with_a_smaller_batch(tmp_path, fake_engine):
    engine = fake_engine(FakeEngine(ooms=1))
    report = rendering.render_chunk_frames(chunk(tmp_path, [0, 1, 2, 3], batch_size=4))
    assert engine.batches == [["0", "1", "2", "3"], ["0", "1"], ["2", "3"]]
    assert report.rendered == [0, 1, 2, 3]


def test_chunk_out_of_memory_twice_fails_but_keeps_written_frames(tmp_path, fake_engine):
    engine = fake_engine(FakeEngine(ooms=2))
    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError):
        rendering.render_chunk_frames(chunk(tmp_path, [0, 1, 2, 3], batch_size=4))
    assert engine.batches == [["0", "1", "2", "3"], ["0", "1"]]
    assert not frame_path(tmp_path, 0).exists() and not FrameStore(tmp_path / "store").entries()


def test_task_runner_for_job(cat_png, tmp_path, monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    threads = task_runner_for(make_job(cat_png, tmp_path, execution={"runner": "threads", "workers": 3}))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    # No runner in the job: the deployment's environment decides (threads when it says nothing).
    monkeypatch.delenv("MASACTRL_RUNNER", raising=False)
    monkeypatch.delenv("MASACTRL_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner_for(make_job(cat_png, tmp_path)), ThreadPoolTaskRunner)
    monkeypatch.setenv("MASACTRL_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    from_env = task_runner_for(make_job(cat_png, tmp_path))
    assert isinstance(from_env, DaskTaskRunner) and from_env.address == "tcp://127.0.0.1:8786"
    dask = task_runner_for(make_job(cat_png, tmp_path, execution={"runner": "dask", "workers": 2}))
    assert isinstance(dask, DaskTaskRunner)
