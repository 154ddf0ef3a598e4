"""A run killed with kill -9 is marked Crashed, and its GPU slot freed, by the next run of the job.

A real `prefect server start` (SQLite in a temporary PREFECT_HOME), `masactrl-animate run` as a
subprocess in its own process group, killed mid-render, then the same job again.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import yaml
from PIL import Image

from tests.test_flow_e2e import BIN, free_port, start, stop, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_killed_run_is_crashed_and_its_gpu_slot_freed_by_the_rerun(tmp_path, tiny_checkpoint):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "MASACTRL_MODEL": "tiny",
        "MASACTRL_TINY_DIR": str(tiny_checkpoint),
        "MASACTRL_GPU_POOL": "local",
        "MASACTRL_LEASE_DIR": str(tmp_path / "leases"),
        # A lease that cannot expire during the test: the re-run can only get the single GPU slot
        # if the ghost clean-up released the killed run's lease.
        "MASACTRL_GPU_LEASE_SECONDS": "900",
    }
    server_log, run_log, rerun_log = tmp_path / "server.log", tmp_path / "run.log", tmp_path / "rerun.log"
    logs = [server_log, run_log, rerun_log]

    from skimage import data

    Image.fromarray(data.chelsea()).resize((96, 64)).save(tmp_path / "cat.png")
    job = {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": [f"a photo of a cat, pose {i}" for i in range(8)]},
        "settings": {"width": 64, "height": 64, "steps": 4, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "fps": 5},
        "execution": {"chunk_size": 4, "batch_size": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    out = tmp_path / "out"

    def gpu_slots() -> int:
        return httpx.get(f"{api}/v2/concurrency_limits/gpu-local", timeout=5).json()["active_slots"]

    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                   server_log)
    run = None
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 120, "the Prefect server", logs)
        made = subprocess.run([sys.executable, "-c", "from flows.execution.gpu_claims import ensure_gpu_limit; "
                               "ensure_gpu_limit('local', 1)"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert made.returncode == 0, made.stderr[-3000:]
        assert gpu_slots() == 0

        run = start([str(BIN / "masactrl-animate"), "run", str(tmp_path / "job.yaml"), "--no-progress"], env, run_log)
        # the first frame of chunk 0 (4 frames, written one by one) is on disk: the chunk is rendering
        # the next ones, holding the GPU slot
        deadline = time.monotonic() + 300
        while (first := next(out.glob("*/frames/*.png"), None)) is None:
            assert run.poll() is None and time.monotonic() < deadline, run_log.read_text()[-4000:]
            time.sleep(0.1)
        job_dir = first.parent.parent
        assert gpu_slots() == 1
        running = json.loads((job_dir / "running.json").read_text())
        assert running["pid"] == run.pid and running["flow_run_id"]
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert run.returncode == -signal.SIGKILL

        ghost = running["flow_run_id"]
        assert httpx.get(f"{api}/flow_runs/{ghost}", timeout=5).json()["state"]["type"] == "RUNNING"
        assert gpu_slots() == 1  # killed: nothing released it; the lease would hold it for 900 s
        records = [json.loads(p.read_text()) for p in (tmp_path / "leases").glob("*.json")]
        assert [r["pid"] for r in records] == [run.pid] and records[0]["limit"] == "gpu-local"
        ghost_tree = {ghost} | {r["id"] for r in httpx.post(f"{api}/flow_runs/filter", json={
            "flow_runs": {"parent_flow_run_id": {"any_": [ghost]}}}, timeout=5).json()}
        assert records[0]["flow_run_id"] in ghost_tree  # the chunk runs in the render-frames subflow

        rerun = subprocess.run([str(BIN / "masactrl-animate"), "run", str(tmp_path / "job.yaml"), "--no-progress",
                                "--json"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=rerun_log.open("w"), text=True, timeout=420)
        rerun_text = rerun_log.read_text()
        assert rerun.returncode == 0, rerun_text[-4000:]
        result = json.loads(rerun.stdout)
        assert result["frame_count"] == 8 and 1 <= result["frames_skipped"] < 8

        # the ghost and everything under it that was still running: Crashed, with who and why
        state = httpx.get(f"{api}/flow_runs/{ghost}", timeout=5).json()["state"]
        assert state["type"] == "CRASHED", state
        host = running["host"]
        assert state["message"].startswith(f"process {run.pid} on {host} is gone; marked crashed by run ")
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": sorted(ghost_tree)}}},
                           timeout=5).json()
        assert tasks and not [t["name"] for t in tasks if t["state"]["type"] in ("RUNNING", "PENDING")]
        assert any(t["state"]["type"] == "CRASHED" and t["name"].startswith("render-chunk") for t in tasks)
        subflows = [httpx.get(f"{api}/flow_runs/{i}", timeout=5).json()["state"]["type"] for i in ghost_tree - {ghost}]
        assert subflows and set(subflows) == {"CRASHED"}

        # the lease was released by the clean-up (one warning line), not by expiry (900 s)
        warnings = [line for line in rerun_text.splitlines() if "of this job died" in line]
        assert len(warnings) == 1 and "released 1 GPU slot lease(s)" in warnings[0], rerun_text[-4000:]
        assert f"process {run.pid} on {host} is gone" in warnings[0]
        assert gpu_slots() == 0
        assert not list((tmp_path / "leases").glob("*.json"))  # the re-run's own records went with its leases
        assert not (job_dir / "running.json").exists()
    finally:
        if run is not None:
            stop(run)
        stop(server)


def test_running_json_of_another_host_or_a_live_process_is_left_alone(tmp_path):
    from flows.execution import ghost_runs
    from flows.jobdir.frames_io import write_json_atomic

    write_json_atomic(tmp_path / "running.json", {"flow_run_id": str(uuid4()), "pid": 1, "host": "elsewhere"})
    said = []

    class Logger:
        def info(self, msg, *args):
            said.append(msg % args)

        warning = info

    assert ghost_runs.clean_up_ghost(tmp_path, uuid4(), Logger(), client=object()) is None
    assert len(said) == 1 and "another host" in said[0] and (tmp_path / "running.json").exists()

    me = os.getpid()
    write_json_atomic(tmp_path / "running.json", {"flow_run_id": str(uuid4()), "pid": me,
                                                  "host": ghost_runs.hostname()})
    assert ghost_runs.clean_up_ghost(tmp_path, uuid4(), client=object()) is None  # alive: not a ghost
    assert (tmp_path / "running.json").exists()


def test_process_alive_sees_dead_reused_and_zombie_pids():
    from flows.execution.ghost_runs import _process_started, process_alive

    assert process_alive(os.getpid(), _process_started(os.getpid()))
    assert not process_alive(os.getpid(), _process_started(os.getpid()) - 100)  # pid reused since
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process_alive(child.pid):
        time.sleep(0.1)
    assert not process_alive(child.pid)  # a zombie until reaped
    child.wait()
    assert not process_alive(child.pid)


def test_running_json_is_removed_at_the_end_and_only_by_its_writer(tmp_path):
    from flows.execution import ghost_runs

    with ghost_runs.running(tmp_path, None) as path:
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == ghost_runs.hostname() and record["started"]
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with ghost_runs.running(tmp_path, uuid4()):
            raise RuntimeError("boom")
    assert not (tmp_path / "running.json").exists()
