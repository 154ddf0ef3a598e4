"""The real animate flow on Dask: a LocalCluster of 2 worker processes (CPU, tiny checkpoint).

* frames rendered over Dask equal frames rendered with threads (PNG pixels: at most one level of
  difference, the image-space counterpart of the engine's 1e-4 batching tolerance on latents);
* each worker loads its pipeline once and computes the source branch once for all its chunks;
* killing a worker process (by its pid) in the middle of a job still ends with every frame
  rendered, the frames written before the kill kept, and the same pictures.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import AnimationJob, animate
from flows.execution import worker_cache
from flows.jobdir.frames_io import frame_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

STEPS, START_STEP = 4, 1
PROMPTS = [
    "a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping",
    "a photo of a cat running", "a photo of a cat sleeping", "a photo of a cat eating",
]


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("src") / "cat.png"
    Image.fromarray(data.chelsea()).resize((96, 64)).save(path)
    return path


def make_job(image: Path, out: Path, execution: dict | None = None) -> AnimationJob:
    return AnimationJob.model_validate({
        "source": {"image": str(image), "prompt": "a photo of a cat"},
        "frames": {"prompts": PROMPTS},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": START_STEP},
        "output": {"folder": str(out), "gif": False, "mp4": False},
        "execution": {"batch_size": 1, "chunk_size": 1, **(execution or {})},
    })


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def assert_same_frames(a: list[str], b: list[str]) -> None:
    assert len(a) == len(b) == len(PROMPTS)
    for pa, pb in zip(a, b):
        diff = np.abs(pixels(pa) - pixels(pb))
        assert diff.max() <= 1 and diff.mean() < 0.01, (pa, pb, diff.max(), diff.mean())


@pytest.fixture(scope="module")
def threads_result(cat_png, tmp_path_factory, prefect_harness):
    return animate(make_job(cat_png, tmp_path_factory.mktemp("threads")))


@pytest.fixture
def cluster(prefect_harness):
    """2 worker processes, 1 thread and GPU=1 each, like `dask worker --resources GPU=1`.

    Started after prefect_harness so the spawned workers inherit MASACTRL_TINY_DIR."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, resources={"GPU": 1},
                      dashboard_address=":0") as local, Client(local) as client:
        yield local, client


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_dask_frames_equal_threads_and_each_worker_loads_once(cat_png, tmp_path, threads_result, cluster):
    local, client = cluster
    pids = worker_pids(client)
    assert len(pids) == 2 and os.getpid() not in pids.values()  # real processes

    t0 = time.perf_counter()
    result = animate(make_job(cat_png, tmp_path, {"runner": "dask", "dask_address": local.scheduler_address}))
    seconds = time.perf_counter() - t0

    assert result.frame_count == len(PROMPTS) and result.frames_rendered == len(PROMPTS)
    assert result.job_hash == threads_result.job_hash  # same job, other runner
    assert_same_frames(result.frames, threads_result.frames)

    loads = client.run(worker_cache.pipeline_loads)
    assert worker_pids(client) == pids  # no worker was replaced
    assert sorted(loads.values()) == [1, 1], loads  # 6 chunks, one pipeline load per worker
    # the source branch is computed once per worker, not once per chunk
    per_branch = STEPS - START_STEP
    assert threads_result.unet_calls["source_calls"] == per_branch
    assert result.unet_calls["source_calls"] == 2 * per_branch, result.unet_calls
    assert result.unet_calls["frame_calls"] == threads_result.unet_calls["frame_calls"] == len(PROMPTS) * STEPS
    print(f"dask run of {len(PROMPTS)} frames on 2 workers: {seconds:.1f} s; loads {loads}")


def test_killing_a_worker_mid_job_still_renders_every_frame(cat_png, tmp_path, threads_result, cluster):
    local, client = cluster
    pids = worker_pids(client)
    victim_address, victim_pid = sorted(pids.items())[0]
    job = make_job(cat_png, tmp_path, {"runner": "dask", "dask_address": local.scheduler_address})
    from flows.job.plan import plan_job

    job_dir = Path(plan_job(job, write=False).job_dir)
    kept: dict[str, tuple[int, int]] = {}
    killed = threading.Event()

    def kill_when_frames_appear():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            written = [frame_path(job_dir, i) for i in range(len(PROMPTS)) if frame_path(job_dir, i).exists()]
            if written and client.processing(workers=[victim_address]).get(victim_address):
                for p in written:
                    st = p.stat()
                    kept[str(p)] = (st.st_ino, st.st_mtime_ns)
                os.kill(victim_pid, signal.SIGKILL)  # the worker process dies mid-job
                killed.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_when_frames_appear, daemon=True)
    watcher.start()
    result = animate(job)
    watcher.join(10)

    assert killed.is_set(), "the job finished before a worker could be killed"
    assert 0 < len(kept) < len(PROMPTS)
    assert result.frame_count == len(PROMPTS)
    assert all(Path(f).is_file() for f in result.frames)
    assert_same_frames(result.frames, threads_result.frames)
    for path, identity in kept.items():  # frames on disk before the kill were not rendered again
        st = Path(path).stat()
        assert (st.st_ino, st.st_mtime_ns) == identity, path

    # the nanny replaced the killed process; the survivor kept its pipeline
    after = worker_pids(client)
    assert victim_pid not in after.values() and len(after) == 2
    survivor = [a for a in pids if a != victim_address][0]
    assert survivor in after and client.run(worker_cache.pipeline_loads, workers=[survivor])[survivor] == 1


class _RecordRestrictions:
    """Scheduler plugin (the LocalCluster's scheduler runs in this process): the resource
    restrictions of every task that starts processing."""

    name = "record-restrictions"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.seen: dict[str, dict] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            self.seen[str(key)] = dict(ts.resource_restrictions or {}) if ts is not None else {}


def test_dask_chunks_claim_the_gpu_resource(cat_png, tmp_path, prefect_harness):
    """Workers with 2 threads but GPU=1: every render chunk must claim GPU=1 so that a worker never
    runs two chunks at once (CPU tasks may still share the worker)."""
    from distributed import LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Plugin(_RecordRestrictions, SchedulerPlugin):
        pass

    with LocalCluster(n_workers=1, processes=True, threads_per_worker=2, resources={"GPU": 1},
                      dashboard_address=":0") as local:
        plugin = Plugin(local.scheduler)
        local.scheduler.add_plugin(plugin)
        animate(make_job(cat_png, tmp_path, {"runner": "dask", "dask_address": local.scheduler_address}))
    chunks = {k: v for k, v in plugin.seen.items() if "render" in k}
    assert len(chunks) == len(PROMPTS), plugin.seen
    assert all(v == {"GPU": 1} for v in chunks.values()), chunks
