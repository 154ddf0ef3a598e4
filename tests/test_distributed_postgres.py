"""The several-machine path on the real processes an operator starts (deploy/README.md):

PostgreSQL (Debian's package, a throw-away cluster made by initdb) -> `prefect server start` on it
-> `dask scheduler` + two `dask worker --nthreads 1 --resources GPU=1` -> `masactrl-animate serve`
with MASACTRL_RUNNER=dask -> a job through `masactrl-animate submit`. One worker (its nanny and
worker process: a machine lost) is killed while it renders; the job still completes with every
frame, and the frames equal a threads run of the same job (within one PNG level).

Every process is started in its own session on 127.0.0.1 and free ports, and its whole process
group is stopped at the end, pass or fail.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROMPTS = [
    "a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping",
    "a photo of a cat running", "a photo of a cat sleeping",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    """Folder of initdb/pg_ctl from Debian's postgresql package (not on PATH there)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(candidates[-1]).parent if candidates else None


class Processes:
    """Started processes, each the leader of its own process group; stop() ends them all."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict, cwd: Path = ROOT, stdout: Path | None = None
              ) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        out = open(stdout, "w") if stdout else log
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=log, start_new_session=True)
        log.close()
        out.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    @staticmethod
    def kill_group(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 20) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            self.kill_group(proc)


class Postgres:
    """A PostgreSQL cluster in a temporary folder, run by a non-root user (initdb refuses root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = _free_port()
        # Not below pytest's tmp folder: that is private to the user running the tests.
        self.base = Path(tempfile.mkdtemp(prefix="masactrl-pg-"))
        self.data = self.base / "data"
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run the database server")
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self.url = f"postgresql+asyncpg://prefect@127.0.0.1:{self.port}/prefect"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "prefect", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.base / "pg.log"),
                  "-w", "-t", "60", "start")
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "prefect", "prefect")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except AssertionError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def _wait(what: str, check, timeout: float, procs: Processes, names: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.procs:
            if name in names and proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{procs.log(name)}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(procs.log(n) for n in names))


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture
def stack(tmp_path, tiny_checkpoint):
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)")
    procs = Processes(tmp_path)
    pg = Postgres(bindir)
    try:
        pg.start()
        api_port, sched_port = _free_port(), _free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MASACTRL_"))}
        base.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
                    PATH=os.pathsep.join([str(BIN), base.get("PATH", "")]))
        server_env = {**base, "PREFECT_HOME": str(tmp_path / "server-home"), "PREFECT_UI_ENABLED": "false",
                      "PREFECT_API_DATABASE_CONNECTION_URL": pg.url}
        api = f"http://127.0.0.1:{api_port}/api"
        client_env = {**base, "PREFECT_HOME": str(tmp_path / "client-home"), "PREFECT_API_URL": api,
                      "MASACTRL_TINY_DIR": str(tiny_checkpoint), "MASACTRL_GPU_POOL": "pgdask"}
        procs.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                       "--port", str(api_port)], server_env)
        scheduler = f"tcp://127.0.0.1:{sched_port}"
        procs.start("dask-scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                       str(sched_port), "--no-dashboard"], client_env)
        workers = [procs.start(f"dask-worker-{i}", [str(BIN / "dask"), "worker", scheduler, "--nthreads", "1",
                                                    "--resources", "GPU=1", "--no-dashboard", "--host", "127.0.0.1"],
                               client_env) for i in range(2)]
        _wait("the Prefect server on PostgreSQL", lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200,
              240, procs, ["prefect-server"])
        # serve runs flow runs in subprocesses of its own; they pick the runner from its environment.
        serve_env = {**client_env, "MASACTRL_RUNNER": "dask", "MASACTRL_DASK_ADDRESS": scheduler}
        procs.start("serve", [str(BIN / "masactrl-animate"), "serve", "--inbox", str(tmp_path / "inbox"),
                              "--no-schedule", "--gpus", "2"], serve_env, cwd=tmp_path)

        def deployed():
            r = httpx.get(f"{api}/deployments/name/animate/animate", timeout=5)
            return r.status_code == 200

        _wait("the animate deployment", deployed, 180, procs, ["serve", "prefect-server"])
        yield {"api": api, "scheduler": scheduler, "env": client_env, "workers": workers, "procs": procs, "pg": pg}
    finally:
        procs.stop()
        pg.stop()


def _job_file(folder: Path, out: Path) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).resize((96, 64)).save(folder / "cat.png")
    job = {
        "name": "pg-dask",
        "source": {"image": "cat.png", "prompt": "a photo of a cat"},
        "frames": {"prompts": PROMPTS},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 4, "start_step": 1},
        "output": {"folder": str(out), "gif": True, "mp4": False},
        "execution": {"chunk_size": 1, "batch_size": 1},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_submit_to_dask_workers_on_postgres_survives_losing_a_worker(stack, tmp_path):
    from distributed import Client

    from flows.jobdir.frames_io import frame_path

    job = _job_file(tmp_path / "job", tmp_path / "out-dask")
    env = stack["env"]
    cli = str(BIN / "masactrl-animate")

    # The reference: the same job with the threads runner (same server; the job hash ignores the runner).
    threads = subprocess.run([cli, "run", str(job), "--json", "--no-progress", "--set", "execution.runner=threads",
                              "--set", f"output.folder={tmp_path / 'out-threads'}"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert threads.returncode == 0, threads.stderr[-4000:]
    reference = json.loads(threads.stdout)

    job_dir = Path(tmp_path / "out-dask" / reference["job_hash"][:16])
    with Client(stack["scheduler"], timeout=30) as client:
        client.wait_for_workers(2, timeout=120)
        worker_pids = client.run(os.getpid)  # worker address -> pid of the worker process (below its nanny)
        submit = stack["procs"].start("submit", [cli, "submit", str(job), "--json", "--no-progress",
                                                 "--timeout", "600"], env, cwd=tmp_path,
                                        stdout=tmp_path / "submit.json")
        killed = None
        deadline = time.monotonic() + 400
        while killed is None and time.monotonic() < deadline and submit.poll() is None:
            written = [i for i in range(len(PROMPTS)) if frame_path(job_dir, i).exists()]
            busy = [a for a, keys in client.processing().items() if keys and a in worker_pids]
            if written and len(written) < len(PROMPTS) and busy:
                victim = busy[0]
                group = os.getpgid(worker_pids[victim])  # the `dask worker` command this test started
                victim_proc = next(p for p in stack["workers"] if p.pid == group)
                Processes.kill_group(victim_proc, signal.SIGKILL)  # nanny and worker: the machine is gone
                killed = (victim, len(written))
            time.sleep(0.05)
        assert killed is not None, "the job finished (or failed) before a worker could be killed:\n" + \
            stack["procs"].log("submit") + stack["procs"].log("serve")
        submit.wait(600)
        assert submit.returncode == 0, stack["procs"].log("submit") + stack["procs"].log("serve")
        assert len(client.scheduler_info()["workers"]) == 1  # the survivor did the rest

    result = json.loads((tmp_path / "submit.json").read_text())
    assert result["job_hash"] == reference["job_hash"]
    assert result["frame_count"] == len(PROMPTS) and len(result["frames"]) == len(PROMPTS)
    for mine, ref in zip(result["frames"], reference["frames"]):
        assert Path(mine).is_file()
        diff = np.abs(_pixels(mine) - _pixels(ref))
        assert diff.max() <= 1 and diff.mean() < 0.01, (mine, ref, diff.max(), diff.mean())
    with Image.open(result["gif"]) as gif:
        assert gif.n_frames == len(PROMPTS)

    # The run is recorded in PostgreSQL: a completed flow run of the animate deployment.
    runs = httpx.post(f"{stack['api']}/flow_runs/filter", json={}, timeout=10).json()
    states = {r["name"]: r["state"]["type"] for r in runs if r.get("deployment_id")}
    assert "COMPLETED" in states.values(), states
    print(f"killed worker {killed[0]} after {killed[1]} frame(s); {len(runs)} flow runs in PostgreSQL")
