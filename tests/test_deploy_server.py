"""deploy/ against a real `prefect server start` (SQLite, basic auth on): the setup role of the
image's entry point creates the work pool and the GPU limit and deploys deploy/prefect.yaml; the
deployments appear with their schedule and parameter schema, run on a process worker, and the
Docker/Kubernetes targets deploy against pools made from their templates.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PREFECT = str(Path(sys.executable).with_name("prefect"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.auth = f"operator:{secrets.token_urlsafe(16)}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
        # The entrypoint script calls `prefect` and `masactrl-animate` by name, as in the image:
        # put this interpreter's bin folder first, whether or not the venv is activated.
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        self.server_env = {
            **base,
            "PREFECT_HOME": str(tmp / "server-home"),
            "PREFECT_SERVER_API_AUTH_STRING": self.auth,
            "PREFECT_UI_ENABLED": "false",
        }
        # What a worker, the setup job or the CLI get: the API and the client half of basic auth.
        self.client_env = {
            **base,
            "PREFECT_HOME": str(tmp / "client-home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_API_AUTH_STRING": self.auth,
            "MASACTRL_TINY_DIR": os.environ.get("MASACTRL_TINY_DIR", str(tmp / "tiny")),
        }
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.server_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("prefect server did not answer /api/health")

    def api(self, method: str, path: str, **kwargs):
        user, password = self.auth.split(":", 1)
        response = httpx.request(method, f"{self.url}{path}", auth=(user, password), timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this test started (uvicorn child)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("prefect-server"))
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def _run(cmd: list[str], env: dict, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _deployment(server: Server, flow: str, name: str) -> dict:
    return server.api("GET", f"/deployments/name/{flow}/{name}")


def test_api_requires_basic_auth_but_health_does_not(server):
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert httpx.post(f"{server.url}/deployments/filter", json={}, timeout=5).status_code == 401
    user, _ = server.auth.split(":", 1)
    wrong = httpx.post(f"{server.url}/deployments/filter", json={}, auth=(user, "wrong"), timeout=5)
    assert wrong.status_code == 401
    assert isinstance(server.api("POST", "/deployments/filter", json={}), list)


def test_setup_role_creates_pool_limit_and_deployments(server):
    env = {**server.client_env, "MASACTRL_WORK_POOL": "gpu-local", "MASACTRL_GPU_LIMIT": "2"}
    t0 = time.monotonic()
    first = _run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "setup"], env)
    elapsed = time.monotonic() - t0
    assert "GPU limit gpu-local = 2" in first.stdout, first.stdout[-3000:]

    pool = server.api("GET", "/work_pools/gpu-local")
    assert pool["type"] == "process"
    limit = server.api("GET", "/v2/concurrency_limits/gpu-local")
    assert (limit["limit"], limit["active"]) == (2, True)

    animate = _deployment(server, "animate", "animate")
    inbox = _deployment(server, "animate-inbox", "animate-inbox")
    for dep, entrypoint in ((animate, "flows/animation.py:animate"), (inbox, "flows/deployments.py:animate_inbox")):
        assert dep["entrypoint"] == entrypoint
        assert dep["work_pool_name"] == "gpu-local"
        assert dep["work_queue_name"] == "default"
        assert dep["tags"] == ["masactrl-animate"]
        assert dep["enforce_parameter_schema"] is True
        assert dep["job_variables"] == {"env": {"MASACTRL_GPU_POOL": "local"}}
        # no pull step in the file: prefect records the checkout the deploy ran in
        assert dep["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]

    # The animate form is the job model.
    schema = animate["parameter_openapi_schema"]
    assert schema["required"] == ["job"]
    definitions = schema.get("definitions") or schema.get("$defs")
    job_schema = definitions["AnimationJob"]
    assert {"source", "frames", "model", "settings", "output", "execution"} <= set(job_schema["properties"])
    assert animate["schedules"] == []

    # The inbox runs on its cron, one sweep at a time.
    [schedule] = inbox["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"]["cron"] == "*/5 * * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert inbox["parameters"] == {"inbox": "inbox"}
    assert {"inbox", "output_folder"} <= set(inbox["parameter_openapi_schema"]["properties"])
    assert inbox["global_concurrency_limit"]["limit"] == 1
    assert inbox["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"

    # Idempotent: the compose setup service runs on every `up`.
    env["MASACTRL_GPU_LIMIT"] = "3"
    second = _run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "setup"], env)
    assert "work pool gpu-local exists" in second.stdout
    assert server.api("GET", "/v2/concurrency_limits/gpu-local")["limit"] == 3
    names = sorted(d["name"] for d in server.api("POST", "/deployments/filter", json={}))
    assert names == ["animate", "animate-inbox", "sweep"]
    assert _deployment(server, "animate", "animate")["id"] == animate["id"]
    print(f"setup (pool + limit + deploy --all) took {elapsed:.1f} s")


def test_inbox_deployment_runs_on_a_process_worker(server, tmp_path):
    """A flow run of animate-inbox (empty inbox: nothing to render) completes on a worker."""
    inbox_dir = tmp_path / "inbox"
    inbox_dir.mkdir()
    dep = _deployment(server, "animate-inbox", "animate-inbox")
    # Its */5 cron would otherwise hand the worker a scheduled run of the default inbox whenever the
    # test crosses a five-minute boundary; paused, only the run made here is due (pausing deletes
    # the auto-scheduled runs and keeps manual runs).
    server.api("POST", f"/deployments/{dep['id']}/pause_deployment")
    try:
        run = server.api(
            "POST", f"/deployments/{dep['id']}/create_flow_run",
            json={"parameters": {"inbox": str(inbox_dir)}, "name": "inbox-smoke"},
        )
        worker = subprocess.run(
            [PREFECT, "worker", "start", "--pool", "gpu-local", "--type", "process", "--run-once"],
            cwd=tmp_path, env=server.client_env, capture_output=True, text=True, timeout=400,
        )
    finally:
        server.api("POST", f"/deployments/{dep['id']}/resume_deployment")
    state = server.api("GET", f"/flow_runs/{run['id']}")["state"]
    assert state["type"] == "COMPLETED", (state, worker.stdout[-4000:], worker.stderr[-4000:])
    artifacts = server.api("POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": ["inbox-report"]}}})
    assert any(a["flow_run_id"] == run["id"] for a in artifacts)


def _setup(server: Server, **env: str) -> subprocess.CompletedProcess:
    """The image's `setup` role, run from this checkout (what compose's prefect-setup does)."""
    return _run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "setup"], {**server.client_env, **env})


def test_kubernetes_target_deploys_against_the_template_pool(server):
    out = _setup(
        server,
        MASACTRL_WORK_POOL="gpu-k8s",
        MASACTRL_WORK_POOL_TYPE="kubernetes",
        MASACTRL_WORK_POOL_TEMPLATE="deploy/k8s/work-pool-template.json",
        MASACTRL_DEPLOY_TARGET="kubernetes",
        MASACTRL_GPU_POOL="k8s",
        MASACTRL_GPU_LIMIT="4",
    )
    assert "GPU limit gpu-k8s = 4" in out.stdout
    pool = server.api("GET", "/work_pools/gpu-k8s")
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == json.loads((DEPLOY / "k8s" / "work-pool-template.json").read_text())
    for flow_name, name in (("animate", "animate"), ("animate-inbox", "animate-inbox")):
        dep = _deployment(server, flow_name, name)
        assert dep["work_pool_name"] == "gpu-k8s"
        assert dep["job_variables"]["gpu_count"] == 0
        assert dep["job_variables"]["env"]["MASACTRL_DASK_ADDRESS"] == "tcp://dask-scheduler.masactrl.svc:8786"
        assert dep["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/masactrl-animate"}}
        ]
    assert _deployment(server, "animate-inbox", "animate-inbox")["schedules"][0]["schedule"]["cron"] == "*/5 * * * *"


def test_docker_target_deploys_against_a_docker_pool(server):
    _setup(server, MASACTRL_WORK_POOL="gpu-docker", MASACTRL_WORK_POOL_TYPE="docker",
           MASACTRL_DEPLOY_TARGET="docker", MASACTRL_GPU_POOL="docker")
    assert server.api("GET", "/work_pools/gpu-docker")["type"] == "docker"
    dep = _deployment(server, "animate-inbox", "animate-inbox")
    assert dep["work_pool_name"] == "gpu-docker"
    jv = dep["job_variables"]
    assert jv["volumes"] == ["masactrl-data:/data"] and jv["networks"] == ["masactrl"]
    assert jv["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]
    assert dep["schedules"][0]["schedule"]["cron"] == "*/5 * * * *"


def test_unknown_deploy_target_is_refused(server):
    proc = subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "setup"], cwd=ROOT,
                          env={**server.client_env, "MASACTRL_DEPLOY_TARGET": "cloud"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not local, docker or kubernetes" in proc.stderr


_CRASHING_HOLDER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from flows.execution.gpu_claims import gpu_slot
with gpu_slot("crash", lease_duration=60):
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_gpu_slot_of_a_killed_holder_comes_back_after_its_lease(server):
    """A Dask worker killed mid-chunk stops renewing its lease: the server frees the slot
    (lease 60 s + the repossessor's 15 s loop), so the retried chunk is not blocked forever."""
    env = server.client_env
    _run([sys.executable, "-c", "from flows.execution.gpu_claims import ensure_gpu_limit; ensure_gpu_limit('crash', 1)"], env)
    code = _CRASHING_HOLDER.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "holding" in proc.stdout, proc.stderr[-3000:]
    assert server.api("GET", "/v2/concurrency_limits/gpu-crash")["active_slots"] == 1
    t0 = time.monotonic()
    while server.api("GET", "/v2/concurrency_limits/gpu-crash")["active_slots"] and time.monotonic() - t0 < 150:
        time.sleep(3)
    freed_after = time.monotonic() - t0
    assert server.api("GET", "/v2/concurrency_limits/gpu-crash")["active_slots"] == 0, freed_after
    assert freed_after < 120
