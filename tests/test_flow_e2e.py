"""End to end with real components: `prefect server start` (SQLite in a temporary PREFECT_HOME),
`masactrl-animate serve` in the background, `masactrl-animate submit` of a job file.

The processes run in their own process groups and are stopped by their ids.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import imageio.v2 as imageio
import pytest
import yaml
from PIL import Image

from flows.deployments import INBOX_DEPLOYMENT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, first=signal.SIGINT, grace=20.0) -> None:
    """Signal the process group led by ``proc`` (by its id); escalate to SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    for sig, wait in ((first, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(check, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def test_server_serve_submit(tmp_path, tiny_checkpoint):
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
        "MASACTRL_TINY_DIR": str(tiny_checkpoint),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    logs = [tmp_path / "server.log", tmp_path / "serve.log"]

    from skimage import data

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    Image.fromarray(data.chelsea()).resize((96, 64)).save(jobs / "cat.png")
    job = {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping"]},
        "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "fps": 5},
        "execution": {"chunk_size": 2},
    }
    (jobs / "job.yaml").write_text(yaml.safe_dump(job))
    inbox = tmp_path / "inbox"

    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, logs[0])
    serve = None
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 120, "the Prefect server", logs)
        serve = start([str(BIN / "masactrl-animate"), "serve", "--inbox", str(inbox), "--no-schedule",
                       "--gpus", "2"], env, logs[1])

        def deployments():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            names = {d["name"] for d in found}
            return {"animate", "animate-inbox"} <= names and found

        found = wait_for(deployments, 120, "the served deployments", logs)
        animate_dep = next(d for d in found if d["name"] == "animate")
        schema = animate_dep["parameter_openapi_schema"]
        assert schema["required"] == ["job"]
        assert "AnimationJob" in json.dumps(schema) and "RenderSettings" in json.dumps(schema)  # the UI form
        limit = httpx.get(f"{api}/v2/concurrency_limits/gpu-local", timeout=5).json()  # made by `serve --gpus 2`
        assert limit["limit"] == 2 and limit["active"] is True

        # submit and wait: progress lines on stderr, the result as JSON on stdout
        done = subprocess.run([str(BIN / "masactrl-animate"), "submit", str(jobs / "job.yaml"), "--json",
                               "--timeout", "240"], env=env, capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:] + "\n" + logs[1].read_text()[-3000:]
        assert "Completed" in done.stderr
        result = json.loads(done.stdout)
        assert result["frame_count"] == 3 and result["frames_rendered"] == 3
        assert all(Path(p).is_file() for p in result["frames"])
        with Image.open(result["gif"]) as gif:
            assert gif.n_frames == 3 and gif.size == (64, 64) and gif.info["duration"] == 200
        reader = imageio.get_reader(result["mp4"], format="FFMPEG")
        assert reader.get_meta_data()["fps"] == 5 and len([f for f in reader]) == 3
        reader.close()

        # --no-wait prints the flow-run id; the re-run with another fps re-stitches and renders nothing
        queued = subprocess.run([str(BIN / "masactrl-animate"), "submit", str(jobs / "job.yaml"), "--no-wait",
                                 "--set", "output.fps=10"], env=env, capture_output=True, text=True, timeout=120)
        assert queued.returncode == 0, queued.stderr[-3000:]
        run_id = queued.stdout.strip()
        assert len(run_id) == 36

        def finished():
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]
            return state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and state["type"]

        assert wait_for(finished, 180, "the --no-wait run", logs) == "COMPLETED"
        rerun = json.loads((Path(result["job_dir"]) / "result.json").read_text())
        assert rerun["frames_rendered"] == 0 and rerun["unet_calls"]["frame_calls"] == 0
        with Image.open(result["gif"]) as gif:
            assert gif.info["duration"] == 100

        # the inbox deployment renders a dropped job file; `prefect deployment run --watch` exits 0 on success
        inbox_job = {**job, "output": {"folder": "inbox-out", "fps": 5}}
        (inbox / "cat.png").write_bytes((jobs / "cat.png").read_bytes())
        (inbox / "cat.yaml").write_text(yaml.safe_dump(inbox_job))
        ran = subprocess.run([str(BIN / "prefect"), "deployment", "run", INBOX_DEPLOYMENT, "--watch"],
                             env=env, capture_output=True, text=True, timeout=240)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert len(list((inbox / "inbox-out").glob("*/animation.gif"))) == 1
    finally:
        if serve is not None:
            stop(serve)
        stop(server, first=signal.SIGTERM)
    assert serve.poll() is not None and server.poll() is not None
