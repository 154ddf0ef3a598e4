"""What `masactrl-animate` leaves on the terminal: one line, no traceback, when Prefect's
temporary server does not start; none of the third-party noise (mediapipe's C++ log lines, torch
and timm warnings, Prefect's telemetry) unless --verbose; two runs started at once both finish.

Each command runs as its own process, as a user starts it, with a fresh PREFECT_HOME and without
PREFECT_API_URL (so Prefect starts its temporary server), and without the telemetry variables the
test session sets: the CLI must default them itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml
from PIL import Image

BIN = Path(sys.executable).parent
CLI = str(BIN / "masactrl-animate")
WALK = Path(__file__).resolve().parent.parent / "examples" / "poses" / "walk"
# Lines a user saw on the terminal that are not the project's.
NOISE = ("FutureWarning", "absl", "TensorFlow Lite", "database is locked", "Overwriting", "W0000")
# Variables of the test session or the developer's shell that would hide what a plain shell shows.
UNSET = ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PYTHONWARNINGS",
         "MASACTRL_VERBOSE", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")


def user_env(tmp_path: Path, tiny_checkpoint: Optional[Path] = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), HF_HUB_OFFLINE="1", **extra)
    if tiny_checkpoint is not None:
        env["MASACTRL_TINY_DIR"] = str(tiny_checkpoint)
    return env


def cli(args, env, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cat_job(tmp_path) -> Path:
    """Two prompts on a cat photo, 64x64, 3 steps: the cheapest run (no poses, no detector)."""
    from skimage import data

    folder = tmp_path / "jobs"
    folder.mkdir(exist_ok=True)
    Image.fromarray(data.chelsea()).resize((96, 64)).save(folder / "cat.png")
    job = {
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat jumping"]},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
        "output": {"folder": str(tmp_path / "out"), "fps": 8},
    }
    path = folder / "cat.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture
def walk_job(tmp_path) -> Path:
    """Two walk poses moved onto the astronaut (`retarget: source`): runs the bundled mediapipe
    detector while planning, in the plan and in measure, and imports controlnet_aux to draw."""
    from skimage import data

    folder = tmp_path / "jobs"
    (folder / "poses").mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).resize((128, 128)).save(folder / "astronaut.png")
    for name in sorted(p.name for p in WALK.glob("*.json"))[:2]:
        (folder / "poses" / name).write_bytes((WALK / name).read_bytes())
    job = {
        "name": "tiny-walk",
        "source": {"image": "astronaut.png", "prompt": "a photo of an astronaut"},
        "frames": {"prompts": "a photo of an astronaut walking",
                   "poses": {"kind": "openpose_json", "path": "poses", "retarget": "source"}},
        "model": {"model": "tiny", "controlnet": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1, "frame_start": "noise"},
        "output": {"folder": str(tmp_path / "out"), "fps": 8},
    }
    path = folder / "walk.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def test_server_that_does_not_start_is_one_line_and_exit_1(cat_job, tmp_path, tiny_checkpoint):
    # 0 s is what a busy machine looks like to Prefect: its wait loop gives up before the first probe.
    env = user_env(tmp_path, tiny_checkpoint, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    done = cli(["run", str(cat_job), "--no-progress"], env, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "temporary server did not answer" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert line.startswith("run failed:") and "within 0 s" in line  # the user's explicit value is kept
    assert "prefect server start" in line and "export PREFECT_API_URL=http://127.0.0.1:4200/api" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("frame_*.png"))


PRINT_SETTINGS = """
import os
import flows.cli
from prefect.settings import get_current_settings
flows.cli.prefect_defaults()
server = get_current_settings().server
print(server.ephemeral.startup_timeout_seconds, server.analytics_enabled, os.environ.get("DO_NOT_TRACK"))
"""


@pytest.mark.parametrize("given,expected", [
    ({}, "120 False 1"),
    ({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7", "PREFECT_SERVER_ANALYTICS_ENABLED": "true",
      "DO_NOT_TRACK": "0"}, "7 True 0"),
    ({"profile": "7"}, "7 False 1"),
], ids=["unset", "environment", "profile"])
def test_prefect_defaults_only_where_the_user_set_nothing(tmp_path, given, expected):
    given = dict(given)
    env = user_env(tmp_path, **{k: v for k, v in given.items() if k != "profile"})
    if "profile" in given:  # `prefect config set` writes this
        home = tmp_path / "prefect-home"
        home.mkdir()
        (home / "profiles.toml").write_text('active = "mine"\n\n[profiles.mine]\n'
                                           f'PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "{given["profile"]}"\n')
    done = subprocess.run([sys.executable, "-c", PRINT_SETTINGS], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == expected


def test_run_shows_only_the_projects_messages(walk_job, tmp_path, tiny_checkpoint):
    env = user_env(tmp_path, tiny_checkpoint)
    done = cli(["run", str(walk_job)], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not noise_in(done.stderr + done.stdout), noise_in(done.stderr + done.stdout)
    # the project's own messages stay: its progress bar, its task logs, the result
    assert "frames: 100%" in done.stderr and ": 2 frames -> " in done.stderr and "Done: 2 frames" in done.stderr
    assert "GIF:" in done.stdout and "pose | frame:" in done.stdout

    invalid = cli(["run", str(walk_job), "--set", "settings.width=100"], env, tmp_path)
    assert invalid.returncode == 2 and "invalid job" in invalid.stderr and "settings.width" in invalid.stderr


def test_verbose_shows_third_party_lines(walk_job, tmp_path, tiny_checkpoint):
    """`validate` plans the job: the detector starts and controlnet_aux is imported, like in a run."""
    env = user_env(tmp_path, tiny_checkpoint)
    quiet = cli(["validate", str(walk_job)], env, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "valid: 2 frames" in quiet.stdout and not noise_in(quiet.stderr), quiet.stderr[-3000:]
    for args in (["--verbose", "validate", str(walk_job)], ["validate", str(walk_job), "--verbose"]):
        loud = cli(args, env, tmp_path)
        assert loud.returncode == 0, loud.stderr[-3000:]
        assert "TensorFlow Lite" in loud.stderr and "FutureWarning" in loud.stderr, loud.stderr[-3000:]


def test_only_the_projects_warning_categories_are_shown(monkeypatch):
    import warnings

    from flows.cli import quiet_terminal
    from flows.job.model import MovedFieldWarning

    monkeypatch.delenv("MASACTRL_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as shown:  # restores showwarning afterwards
        warnings.simplefilter("always")
        quiet_terminal(verbose=False)
        warnings.warn("`torch.jit.script` is deprecated", FutureWarning)
        warnings.warn("Overwriting foo in registry", UserWarning)
        # attributed to pydantic (stacklevel=2 in a validator), still the project's own
        warnings.warn("settings.batch_size moved to execution.batch_size", MovedFieldWarning)
    assert [str(w.message) for w in shown] == ["settings.batch_size moved to execution.batch_size"]


QUIET_SCRIPT = """
import os
from pose_sources.mediapipe_detector import quiet_native_stderr
os.write(2, b"before\\n")
with quiet_native_stderr():
    os.write(2, b"hidden\\n")
    with quiet_native_stderr():
        os.write(2, b"nested\\n")
    os.write(2, b"still hidden\\n")
os.write(2, b"after\\n")
"""


@pytest.mark.parametrize("verbose,expected", [("", "before\nafter\n"),
                                              ("1", "before\nhidden\nnested\nstill hidden\nafter\n")])
def test_quiet_native_stderr_silences_fd_2_and_gives_it_back(tmp_path, verbose, expected):
    env = {**os.environ, "MASACTRL_VERBOSE": verbose}
    done = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], env=env, cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == expected, done.stderr


@pytest.mark.slow
def test_two_runs_started_at_once_both_finish(cat_job, tmp_path, tiny_checkpoint):
    """Two runs on one fresh PREFECT_HOME, started together: their temporary servers used to migrate
    the same SQLite file at once; one failed, Prefect restarted it, and its uvicorn traceback landed
    on the terminal (2 of 7 tries before the fix). Both must finish, quietly, within 10 minutes."""
    env = user_env(tmp_path, tiny_checkpoint)
    procs = [subprocess.Popen([CLI, "run", str(cat_job), "--no-progress", "--set", f"output.folder={tmp_path / name}"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
             for name in ("out-a", "out-b")]
    deadline = time.monotonic() + 600
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (start_new_session)
                proc.wait()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        start = max(0, err.find("Traceback") - 1000)
        assert "Traceback" not in err and not noise_in(err), err[start:start + 6000]
        assert "GIF:" in out
