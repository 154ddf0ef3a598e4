"""Task-runner choice, the Dask GPU claim and the per-process cache (flows/execution/runners.py).

The slow tests start real Dask worker processes (spawned: they import this module by name, so
the tasks below must stay at module level) and a Prefect test server.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from pathlib import Path

import pytest

from flows.execution import runners
from flows.execution.gpu_claims import GPU_RESOURCE, claim_gpu, wait_for_gpu_workers
from flows.execution.runners import (
    RunnerSettings,
    local_cluster_spec,
    make_task_runner,
    runner_settings_from_env,
    worker_identity,
)

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner


@pytest.fixture
def clean_env(monkeypatch):
    for var in runners.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


# --- settings and runner choice ---------------------------------------------------------


def test_default_runner_is_one_thread(clean_env):
    runner = make_task_runner()
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 1
    assert make_task_runner(RunnerSettings(max_workers=3))._max_workers == 3


def test_scheduler_address_connects_to_existing_cluster():
    runner = make_task_runner(RunnerSettings(kind="dask", scheduler_address=" tcp://10.0.0.5:8786 "))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786"
    assert runner.cluster_class is None and runner.cluster_kwargs == {}


def test_cpu_local_cluster_is_worker_processes_with_one_gpu_slot_each():
    cls, kwargs = local_cluster_spec(RunnerSettings(kind="dask", n_workers=2), gpu_count=0, has_dask_cuda=True)
    assert cls == "distributed.LocalCluster"
    assert kwargs == {"n_workers": 2, "processes": True, "threads_per_worker": 1, "resources": {"GPU": 1}}

    runner = make_task_runner(RunnerSettings(kind="dask", n_workers=2, threads_per_worker=2))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs["resources"] == {"GPU": 1}
    assert runner.cluster_kwargs["threads_per_worker"] == 2

    _, no_claim = local_cluster_spec(RunnerSettings(kind="dask", n_workers=1, gpu_resource=False), gpu_count=0)
    assert "resources" not in no_claim


def test_cpu_local_cluster_default_size_follows_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    _, kwargs = local_cluster_spec(RunnerSettings(kind="dask"), gpu_count=0)
    assert kwargs["n_workers"] == 4
    _, kwargs = local_cluster_spec(RunnerSettings(kind="dask", threads_per_worker=8), gpu_count=0)
    assert kwargs["n_workers"] == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    _, kwargs = local_cluster_spec(RunnerSettings(kind="dask"), gpu_count=0)
    assert kwargs["n_workers"] == 1


def test_gpus_with_dask_cuda_use_local_cuda_cluster(monkeypatch):
    # A stand-in dask_cuda module: DaskTaskRunner resolves the class name at construction.
    fake = types.ModuleType("dask_cuda")

    class LocalCUDACluster:  # noqa: D401 - stand-in
        pass

    fake.LocalCUDACluster = LocalCUDACluster
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setattr(runners, "cuda_device_count", lambda: 4)

    runner = make_task_runner(RunnerSettings(kind="dask"))
    assert runner.cluster_class == "dask_cuda.LocalCUDACluster"
    assert runner.resolved_cluster_class is LocalCUDACluster
    # dask-cuda makes one worker per visible GPU by itself; we only add the GPU slot
    assert runner.cluster_kwargs == {"threads_per_worker": 1, "resources": {"GPU": 1}}

    runner = make_task_runner(RunnerSettings(kind="dask", n_workers=2))
    assert runner.cluster_kwargs["n_workers"] == 2
    with pytest.raises(ValueError, match="n_workers=5 but only 4 GPU"):
        make_task_runner(RunnerSettings(kind="dask", n_workers=5))


def test_gpus_without_dask_cuda_fall_back_to_one_worker(caplog):
    with caplog.at_level("WARNING", logger="flows.execution.runners"):
        cls, kwargs = local_cluster_spec(RunnerSettings(kind="dask", n_workers=3), gpu_count=2, has_dask_cuda=False)
    assert cls == "distributed.LocalCluster"
    assert kwargs["n_workers"] == 1
    assert "dask-cuda is not installed" in caplog.text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scheduler_address": "tcp://h:8786"}, "runner.scheduler_address only applies to kind='dask'"),
        ({"n_workers": 2}, "runner.n_workers only applies to kind='dask'"),
        ({"kind": "dask", "max_workers": 2}, "runner.max_workers only applies to kind='threads'"),
        ({"kind": "dask", "scheduler_address": "not an address"}, "is not a Dask scheduler address"),
        ({"kind": "dask", "scheduler_address": "tcp://h:8786", "n_workers": 2}, "remove them"),
        ({"kind": "dask", "n_workers": 0}, "greater than or equal to 1"),
        ({"kind": "gpu"}, "'threads' or 'dask'"),
        ({"kind": "dask", "workers": 2}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        RunnerSettings.model_validate(values)


def test_settings_schema_documents_every_field():
    schema = RunnerSettings.model_json_schema()
    assert set(schema["properties"]) == {
        "kind", "max_workers", "scheduler_address", "n_workers", "threads_per_worker", "gpu_resource",
    }
    for name, prop in schema["properties"].items():
        assert len(prop.get("description", "")) > 20, name
    assert schema["properties"]["kind"]["default"] == "threads"


def test_environment_sets_the_deployment_default(clean_env, monkeypatch):
    assert runner_settings_from_env({}) == RunnerSettings()
    assert runner_settings_from_env({"MASACTRL_DASK_ADDRESS": "tcp://dask-scheduler:8786"}) == RunnerSettings(
        kind="dask", scheduler_address="tcp://dask-scheduler:8786"
    )
    local = runner_settings_from_env(
        {"MASACTRL_RUNNER": "dask", "MASACTRL_DASK_WORKERS": "3", "MASACTRL_DASK_GPU_RESOURCE": "false"}
    )
    assert (local.kind, local.n_workers, local.gpu_resource) == ("dask", 3, False)
    with pytest.raises(ValueError, match="MASACTRL_DASK_WORKERS='lots'"):
        runner_settings_from_env({"MASACTRL_RUNNER": "dask", "MASACTRL_DASK_WORKERS": "lots"})

    monkeypatch.setenv("MASACTRL_DASK_ADDRESS", "tcp://sched:8786")
    assert make_task_runner(None).address == "tcp://sched:8786"
    # a job's own settings win over the environment
    assert isinstance(make_task_runner(RunnerSettings()), ThreadPoolTaskRunner)


def test_claim_gpu_outside_a_dask_flow_adds_no_annotation():
    import dask

    with claim_gpu():
        assert dask.get_annotations() == {}


# --- Dask: GPU resource, worker checks, worker death -------------------------------------


def test_wait_for_gpu_workers_reports_missing_resource_instead_of_hanging():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0") as cluster, Client(
        cluster
    ) as client:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"--resources GPU=1"):
            wait_for_gpu_workers(client, timeout=1.0)
        assert time.monotonic() - t0 < 10
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0", resources={GPU_RESOURCE: 1}
    ) as cluster, Client(cluster) as client:
        offers = wait_for_gpu_workers(client, timeout=5.0)
        assert list(offers.values()) == [1.0]


@pytest.fixture(scope="module")
def prefect_api(prefect_harness):
    """The session's temporary Prefect API (tests/conftest.py): one server start for the suite.
    The limits made here are named after their test, never the flows' `gpu-local`."""
    yield


@task
def timed_chunk(index: int, seconds: float = 0.6) -> dict:
    start = time.time()
    time.sleep(seconds)
    return {"index": index, **worker_identity(), "start": start, "end": time.time()}


@task
def chunk_that_kills_its_worker(index: int, marker_dir: str, victim: int = 1) -> dict:
    attempts = Path(marker_dir) / f"attempts-{index}"
    with attempts.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(0.3)
    died = Path(marker_dir) / "killed-pid"
    if index == victim and not died.exists():
        died.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-chunk
    return {"index": index, **worker_identity()}


def _overlaps_per_worker(rows: list[dict]) -> int:
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_worker.setdefault(row["worker"], []).append((row["start"], row["end"]))
    overlaps = 0
    for spans in by_worker.values():
        spans.sort()
        overlaps += sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    return overlaps


@flow(task_runner=make_task_runner(RunnerSettings(kind="dask", n_workers=2, threads_per_worker=2)))
def claimed_and_unclaimed(n: int = 8) -> tuple[list[dict], list[dict]]:
    with claim_gpu():
        claimed = timed_chunk.map(list(range(n)))
    claimed_rows = [f.result() for f in claimed]
    unclaimed = timed_chunk.map(list(range(n)))
    return claimed_rows, [f.result() for f in unclaimed]


@pytest.mark.slow
def test_gpu_claim_never_runs_two_chunks_on_one_worker(prefect_api):
    """Workers have 2 threads but GPU=1: claimed chunks run one at a time per worker,
    unclaimed ones (CPU work) use both threads."""
    claimed, unclaimed = claimed_and_unclaimed()
    assert sorted(r["index"] for r in claimed) == list(range(8))
    workers = {r["worker"] for r in claimed}
    assert len(workers) == 2 and None not in workers
    assert len({r["pid"] for r in claimed}) == 2 and os.getpid() not in {r["pid"] for r in claimed}
    assert _overlaps_per_worker(claimed) == 0
    assert _overlaps_per_worker(unclaimed) > 0  # the check above can fail


@flow(task_runner=make_task_runner(RunnerSettings(kind="dask", n_workers=2)))
def chunks_with_a_dying_worker(marker_dir: str, n: int = 6) -> list[dict]:
    with claim_gpu():
        futures = chunk_that_kills_its_worker.map(list(range(n)), marker_dir=marker_dir)
    return [f.result() for f in futures]


@pytest.mark.slow
def test_worker_killed_mid_chunk_costs_only_that_chunk(prefect_api, tmp_path):
    rows = chunks_with_a_dying_worker(str(tmp_path))
    assert [r["index"] for r in rows] == list(range(6))
    killed = int((tmp_path / "killed-pid").read_text())
    victim_attempts = (tmp_path / "attempts-1").read_text().split()
    assert len(victim_attempts) == 2 and victim_attempts[0] == str(killed)
    assert rows[1]["pid"] != killed  # rescheduled to a live worker
    for index in (0, 2, 3, 4, 5):
        # a chunk whose result lived only on the dead worker may be recomputed; never more
        assert len((tmp_path / f"attempts-{index}").read_text().split()) <= 2


def test_settings_for_the_job_models_execution_block(monkeypatch):
    from pydantic import ValidationError

    from flows.job.model import ExecutionSpec
    from flows.execution.runners import runner_settings_for

    assert runner_settings_for(ExecutionSpec(runner="threads", workers=3)) == RunnerSettings(max_workers=3)
    assert runner_settings_for(ExecutionSpec(runner="dask", workers=2)) == RunnerSettings(kind="dask", n_workers=2)
    assert runner_settings_for(ExecutionSpec(runner="dask", dask_address="tcp://s:8786")) == \
        RunnerSettings(kind="dask", scheduler_address="tcp://s:8786")
    monkeypatch.setenv("MASACTRL_DASK_ADDRESS", "tcp://env:8786")  # empty runner: the deployment's choice
    assert runner_settings_for(ExecutionSpec()) == RunnerSettings(kind="dask", scheduler_address="tcp://env:8786")
    with pytest.raises(ValidationError, match="execution.dask_address only applies"):
        ExecutionSpec(runner="threads", dask_address="tcp://s:8786")
    with pytest.raises(ValidationError):
        ExecutionSpec(runner="gpu")
    with pytest.raises(ValueError, match="not a Dask scheduler address"):
        runner_settings_for(ExecutionSpec(runner="dask", dask_address="http://nope/"))
