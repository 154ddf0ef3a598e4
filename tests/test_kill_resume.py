"""Faults that must not lose or corrupt work, on real processes.

`masactrl-animate run` against a real `prefect server start`, killed with SIGKILL while it inverts,
while it renders and while it encodes the MP4; each run of the same job afterwards ends with
frames, GIF and MP4 byte-identical to an uninterrupted run. Two identical runs started at once
both finish with the same outputs, and the frames are rendered once (a per-job lock).
"""

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from flows.jobdir.manifest import frame_problem

from tests.test_flow_e2e import BIN, free_port, start, stop, wait_for

pytestmark = pytest.mark.slow

FRAMES = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    home = tmp_path_factory.mktemp("kill-resume")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "MASACTRL_MODEL": "tiny",
        "MASACTRL_TINY_DIR": str(tiny_checkpoint),
        "MASACTRL_LEASE_DIR": str(home / "leases"),
    }
    from skimage import data

    Image.fromarray(data.chelsea()).resize((96, 64)).save(home / "cat.png")
    log = home / "server.log"
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        wait_for(lambda: httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=5).status_code == 200, 120,
                 "the Prefect server", [log])
        yield env, home
    finally:
        stop(proc)


def job_file(home: Path, out: Path) -> Path:
    job = {
        "source": {"image": str(home / "cat.png"), "prompt": "a photo of a cat"},
        "frames": {"prompts": [f"a photo of a cat, pose {i}" for i in range(FRAMES)]},
        "settings": {"width": 64, "height": 64, "steps": 4, "start_step": 1},
        "output": {"folder": str(out), "fps": 5},
        "execution": {"chunk_size": 2, "batch_size": 1},
        "quality": {"metrics": False},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run(env, job: Path, log: Path) -> dict:
    done = subprocess.run([str(BIN / "masactrl-animate"), "run", str(job), "--no-progress", "--json"], env=env,
                          stdout=subprocess.PIPE, stderr=log.open("w"), text=True, timeout=600)
    assert done.returncode == 0, log.read_text()[-4000:]
    return json.loads(done.stdout)


def digests(result: dict) -> dict[str, str]:
    files = {Path(p).name: Path(p) for p in result["frames"]}
    files.update({"animation.gif": Path(result["gif"]), "animation.mp4": Path(result["mp4"])})
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


@pytest.fixture(scope="module")
def reference(server):
    env, home = server
    return digests(run(env, job_file(home, home / "reference"), home / "reference.log"))


def _inverting(out: Path) -> bool:
    return any((out / "inversions").glob(".*.lock")) and not any((out / "inversions").glob("*/inversion.json"))


def _rendering(out: Path) -> bool:
    return any(out.glob("*/frames/frame_*.png"))


def _encoding(out: Path) -> bool:
    return any(out.glob("*/.animation.*.tmp.mp4"))


@pytest.mark.parametrize("stage,reached", [("inversion", _inverting), ("render", _rendering), ("stitch", _encoding)])
def test_kill_at_any_stage_resumes_to_byte_identical_outputs(server, reference, stage, reached):
    env, home = server
    out = home / f"killed-at-{stage}"
    job = job_file(home, out)
    log = home / f"{stage}.log"
    proc = start([str(BIN / "masactrl-animate"), "run", str(job), "--no-progress"], env, log)
    try:
        deadline = time.monotonic() + 400
        while not reached(out):
            assert proc.poll() is None, f"the run ended before reaching {stage}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert not list(out.glob("*/result.json"))  # it really died before finishing
    stored = [p for p in (out / "frame_store").glob("*.png") if frame_problem(p) is None]
    result = run(env, job, home / f"{stage}-resumed.log")
    assert digests(result) == reference
    assert result["frames_rendered"] == FRAMES - len(stored)  # only the frames the store did not hold
    if stage != "inversion":
        assert stored  # the render had stored frames before the kill
    assert not list(Path(result["job_dir"]).glob(".*.tmp.*"))  # no temp file of the killed run is left


def test_two_identical_runs_at_once_render_once_and_agree(server, reference):
    env, home = server
    out = home / "twice"
    job = job_file(home, out)
    procs = [subprocess.Popen([str(BIN / "masactrl-animate"), "run", str(job), "--no-progress", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=(home / f"twice-{i}.log").open("w"), text=True)
             for i in range(2)]
    results = []
    for i, proc in enumerate(procs):
        stdout, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, (home / f"twice-{i}.log").read_text()[-4000:]
        results.append(json.loads(stdout))
    assert [digests(r) for r in results] == [reference, reference]
    # the second waited for the first (the job lock) and found every frame on disk
    assert sorted(r["frames_rendered"] for r in results) == [0, FRAMES]
    assert sum(r["unet_calls"]["inversion_calls"] for r in results) == 4
