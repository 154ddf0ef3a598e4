"""deploy/ parsed and checked without a Docker engine or a cluster: services, health checks, GPUs,
the shared volume, no literal secrets, entrypoints that exist, the image's entry point and
health-check script. (tests/test_deploy_server.py deploys against a real Prefect server.)
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
HEALTHCHECK = DEPLOY / "healthcheck.py"
COMPOSE_FILES = ["compose.yaml", "compose.gpu-worker.yaml", "compose.nfs.yaml"]
SECRET_WORDS = re.compile(r"PASSWORD|AUTH_STRING|TOKEN|SECRET|API_KEY", re.I)

# --- compose interpolation (the subset the files use: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if current in (None, "") if op == ":?" else current is None:
                raise MissingVariable(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value)


def load_compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def compose_variables(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}


SECRETS_ENV = {"POSTGRES_PASSWORD": "pg-test", "PREFECT_AUTH_STRING": "u:p"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(load_compose("compose.yaml"), dict(SECRETS_ENV))


def _env(service: dict) -> dict:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return env


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- compose.yaml -------------------------------------------------------------------------


def test_compose_has_the_services_and_their_images(compose):
    assert set(compose["services"]) == {
        "postgres", "prefect-server", "prefect-setup", "prefect-worker", "dask-scheduler", "dask-worker", "media",
    }
    roles = {name: svc.get("command") for name, svc in compose["services"].items()}
    assert roles == {
        "postgres": None,
        "prefect-server": ["server"],
        "prefect-setup": ["setup"],
        "prefect-worker": ["worker"],
        "dask-scheduler": ["dask-scheduler"],
        "dask-worker": ["dask-worker"],
        "media": ["masactrl-animate", "media", "--root", "/data/out", "--host", "0.0.0.0", "--port", "4300"],
    }
    for name, svc in compose["services"].items():
        if name != "postgres":
            assert svc["image"] == "masactrl-animate:latest"
            assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
            assert (DEPLOY / ".." / svc["build"]["dockerfile"]).resolve().is_file()
    assert compose["services"]["postgres"]["image"].startswith("postgres:")


def test_compose_health_checks_and_start_order(compose):
    services = compose["services"]
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        if name == "prefect-setup":
            assert hc == {"disable": True}  # one-shot job
            continue
        assert hc["test"][0] in ("CMD", "CMD-SHELL") and hc["interval"] and hc["retries"] >= 3
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert services["prefect-server"]["healthcheck"]["test"][-1] == "http://127.0.0.1:4200/api/health"
    assert services["prefect-worker"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/health"
    assert services["dask-scheduler"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8787/health"
    assert services["dask-worker"]["healthcheck"]["test"][3:] == ["dask-workers", "tcp://dask-scheduler:8786", "--local"]
    assert services["media"]["healthcheck"]["test"][-1] == "http://127.0.0.1:4300/.health"
    for svc in services.values():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services
            if cond["condition"] == "service_healthy":
                assert services[dep]["healthcheck"].get("disable") is not True
    assert services["prefect-server"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["prefect-setup"]["depends_on"] == {"prefect-server": {"condition": "service_healthy"}}
    assert services["prefect-worker"]["depends_on"]["prefect-setup"] == {"condition": "service_completed_successfully"}
    assert services["prefect-setup"]["restart"] == "no"


def test_compose_gpus_resources_and_shared_data(compose):
    services = compose["services"]
    for name in ("dask-worker", "prefect-worker"):
        [device] = _gpu_devices(services[name])
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert _gpu_devices(services["dask-worker"])[0]["count"] == "all"
    for name in ("postgres", "prefect-server", "prefect-setup", "dask-scheduler", "media"):
        assert not _gpu_devices(services[name]), name
    # every role that touches jobs mounts the same volume at /data
    mounts = {name: svc.get("volumes", []) for name, svc in services.items()}
    for name in ("prefect-setup", "prefect-worker", "dask-worker"):
        assert {"type": "volume", "source": "data", "target": "/data"} in mounts[name], name
    assert "pgdata:/var/lib/postgresql/data" in mounts["postgres"]
    # the media server only reads the job folders
    assert mounts["media"] == [{"type": "volume", "source": "data", "target": "/data", "read_only": True}]
    assert compose["volumes"]["data"]["name"] == "masactrl-data"
    # Dask workers claim GPU=1 each: their entry point says so
    assert _dry_run("dask-worker", DASK_SCHEDULER_ADDRESS="tcp://s:8786", DASK_WORKER_CPU_ONLY="1").endswith(
        "--resources GPU=1"
    )


def test_compose_prefect_settings_and_auth(compose):
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    valid = _get_valid_setting_names(Settings)
    services = compose["services"]
    server = _env(services["prefect-server"])
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == SECRETS_ENV["PREFECT_AUTH_STRING"]
    assert server["PREFECT_SERVER_DATABASE_PASSWORD"] == SECRETS_ENV["POSTGRES_PASSWORD"]
    assert server["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert server["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert _env(services["postgres"])["POSTGRES_PASSWORD"] == SECRETS_ENV["POSTGRES_PASSWORD"]
    for name in ("prefect-setup", "prefect-worker", "dask-worker"):
        env = _env(services[name])
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert env["PREFECT_API_AUTH_STRING"] == SECRETS_ENV["PREFECT_AUTH_STRING"], name
        assert env["PREFECT_LOCAL_STORAGE_PATH"].startswith("/data/"), name
        assert env["MASACTRL_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    for svc in services.values():
        for key in _env(svc):
            if key.startswith("PREFECT_"):
                assert key in valid, f"{key} is not a Prefect {sys.modules['prefect'].__version__} setting"
    # artifacts link the job files through the media service, which serves /data/out
    for name in ("prefect-setup", "prefect-worker", "dask-worker"):
        env = _env(services[name])
        assert env["MASACTRL_MEDIA_URL"] == "http://localhost:4300" and env["MASACTRL_MEDIA_ROOT"] == "/data/out"
    media = services["media"]
    assert media["command"][media["command"].index("--root") + 1] == _env(services["dask-worker"])["MASACTRL_MEDIA_ROOT"]
    assert _env(media)["MASACTRL_MEDIA_AUTH"] == ""  # basic auth only when the operator sets it
    # published ports stay on localhost unless the operator opts in
    for name in ("prefect-server", "dask-scheduler", "media"):
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), port


def test_compose_refuses_to_start_without_its_secrets():
    raw = load_compose("compose.yaml")
    for missing in SECRETS_ENV:
        env = {k: v for k, v in SECRETS_ENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(raw, env)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_no_literal_secrets_in_deploy_files(name):
    text = (DEPLOY / name).read_text()

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if SECRET_WORDS.search(str(k)) and isinstance(v, (str, int)) and not isinstance(v, bool):
                    assert re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(v)), f"{path}/{k} = {v!r} is a literal"
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(yaml.safe_load(text))


def test_every_compose_variable_is_documented():
    documented = (DEPLOY / "env.example").read_text() + (DEPLOY / "README.md").read_text()
    for name in COMPOSE_FILES:
        for var in compose_variables((DEPLOY / name).read_text()):
            assert re.search(rf"\b{var}\b", documented), f"{var} ({name}) is not in env.example or README.md"
    example = dict(
        line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in example.items():
        if SECRET_WORDS.search(key):
            assert value == "", f"env.example must not carry a value for {key}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()  # deploy/.env stays out of git


def test_gpu_worker_and_nfs_overrides():
    worker = interpolate(
        load_compose("compose.gpu-worker.yaml"),
        {"DASK_SCHEDULER_ADDRESS": "tcp://head:8786", "PREFECT_API_URL": "http://head:4200/api",
         "PREFECT_AUTH_STRING": "u:p", "NFS_SERVER": "nas"},
    )
    svc = worker["services"]["dask-worker"]
    assert svc["command"] == ["dask-worker"] and svc["network_mode"] == "host"
    assert _gpu_devices(svc)[0]["capabilities"] == ["gpu"]
    assert svc["environment"]["PREFECT_API_AUTH_STRING"] == "u:p"
    assert worker["volumes"]["data"]["driver_opts"]["type"] == "nfs"
    assert "addr=nas" in worker["volumes"]["data"]["driver_opts"]["o"]
    with pytest.raises(MissingVariable, match="DASK_SCHEDULER_ADDRESS"):
        interpolate(load_compose("compose.gpu-worker.yaml"), {"PREFECT_AUTH_STRING": "u:p", "NFS_SERVER": "nas"})
    nfs = interpolate(load_compose("compose.nfs.yaml"), {"NFS_SERVER": "nas"})
    assert nfs["volumes"]["data"]["name"] == "masactrl-data"  # the same volume the head's services mount


def test_docker_compose_config_when_available(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here (only its YAML is checked)")
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=pg-test\nPREFECT_AUTH_STRING=u:p\n")
    proc = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# --- Dockerfile and the entry point -------------------------------------------------------


def test_dockerfile_builds_the_project_on_a_cuda_runtime():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.]+-runtime-ubuntu[\d.]+$", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    assert 'pip install $EXTRA ".[cuda]"' in text
    assert '"/opt/masactrl-animate/deploy/docker-entrypoint.sh"]' in text
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    assert "HEALTHCHECK" in text and "healthcheck.py\", \"auto\"" in text
    assert re.search(r"^USER masactrl$", text, re.M)
    for line in text.splitlines():
        if re.match(r"^(ENV|ARG)\b", line) and SECRET_WORDS.search(line):
            pytest.fail(f"secret-looking build setting: {line}")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "out", "**/.env"} <= set(ignore)
    # what `pip install .` needs is in the context
    assert (ROOT / "pyproject.toml").is_file() and "cuda" in (ROOT / "pyproject.toml").read_text()


def _dry_run(*args: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_", "MASACTRL_"))}
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env={**base, "MASACTRL_ENTRYPOINT_DRY_RUN": "1", **env},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_entrypoint_roles():
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK) and os.access(HEALTHCHECK, os.X_OK)
    assert _dry_run() == "prefect worker start --pool gpu-local --type process --with-healthcheck"
    assert _dry_run("worker", MASACTRL_WORK_POOL="gpu-docker", MASACTRL_WORK_POOL_TYPE="docker") == (
        "prefect worker start --pool gpu-docker --type docker --with-healthcheck"
    )
    assert _dry_run("server") == "prefect server start --host 0.0.0.0 --port 4200"
    assert _dry_run("dask-scheduler") == "dask scheduler --port 8786 --dashboard-address :8787"
    assert _dry_run("dask-worker", DASK_SCHEDULER_ADDRESS="tcp://s:8786", DASK_WORKER_CPU_ONLY="1") == (
        "dask worker tcp://s:8786 --nworkers 1 --nthreads 1 --resources GPU=1"
    )
    assert _dry_run("masactrl-animate", "run", "job.yaml") == "masactrl-animate run job.yaml"
    setup = _dry_run("setup", PREFECT_API_URL="http://x/api", MASACTRL_GPU_LIMIT="3").splitlines()
    assert setup[-2].endswith("ensure_gpu_limit(None, int(sys.argv[1])), '=', sys.argv[1]) 3")
    assert setup[-1] == "prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml"


@pytest.mark.parametrize(
    ("role", "env", "message"),
    [
        ("dask-worker", {}, "DASK_SCHEDULER_ADDRESS"),
        ("setup", {}, "PREFECT_API_URL"),
    ],
)
def test_entrypoint_refuses_missing_settings(role, env, message):
    proc = subprocess.run(["sh", str(ENTRYPOINT), role], env={"PATH": os.environ["PATH"],
                          "MASACTRL_ENTRYPOINT_DRY_RUN": "1", **env}, capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr


# --- health-check script ------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path in ("/health", "/api/health") else 503)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _health(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_healthcheck_http_and_auto(http_server, tmp_path):
    assert _health("http", f"{http_server}/api/health").returncode == 0
    bad = _health("http", f"{http_server}/broken")
    assert bad.returncode == 1 and "HTTP 503" in bad.stderr
    assert _health("http", "http://127.0.0.1:9/nothing", "--timeout", "1").returncode == 1
    role_file = tmp_path / "role"
    port = http_server.rsplit(":", 1)[1]
    role_file.write_text("server\n")
    assert _health("auto", MASACTRL_ROLE_FILE=str(role_file), PREFECT_SERVER_API_PORT=port).returncode == 0
    role_file.write_text("worker\n")
    assert _health("auto", MASACTRL_ROLE_FILE=str(role_file), PREFECT_WORKER_WEBSERVER_PORT=port).returncode == 0
    missing = _health("auto", MASACTRL_ROLE_FILE=str(tmp_path / "none"))
    assert missing.returncode == 1 and "no role recorded" in missing.stderr


def test_healthcheck_counts_gpu_workers():
    from distributed import LocalCluster

    # tcp, not inproc: the check runs in another process
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0",
                      protocol="tcp", resources={"GPU": 1}) as gpu_cluster:
        ok = _health("dask-workers", gpu_cluster.scheduler_address, "--local")
        assert ok.returncode == 0 and "1 GPU worker(s) on this host" in ok.stdout
        too_few = _health("dask-workers", gpu_cluster.scheduler_address, "--min-gpu-workers", "2")
        assert too_few.returncode == 1 and "need 2" in too_few.stderr
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0",
                      protocol="tcp") as cpu_cluster:
        none = _health("dask-workers", cpu_cluster.scheduler_address)
        assert none.returncode == 1 and "0 worker(s) offer GPU" in none.stderr


# --- prefect.yaml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def _flow_function(entrypoint: str) -> tuple[str, str]:
    """(flow name, function) declared at ``path:function`` (read with ast: no heavy imports)."""
    path, func = entrypoint.split(":")
    tree = ast.parse((ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "flow":
                    names = [kw.value.value for kw in deco.keywords if kw.arg == "name"]
                    return (names[0] if names else func.replace("_", "-")), func
            raise AssertionError(f"{entrypoint} is not decorated with @flow(...)")
    raise AssertionError(f"{entrypoint}: no function {func}")


def test_prefect_yaml_deployments(prefect_yaml):
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule

    model = PrefectYamlModel.model_validate(prefect_yaml)  # what `prefect deploy` validates
    deployments = {d.name: d for d in model.deployments}
    assert set(deployments) == {"animate", "sweep", "animate-inbox"}
    expected = {"animate": ("flows/animation.py:animate", "animate"),
                "sweep": ("flows/sweep.py:sweep", "sweep"),
                "animate-inbox": ("flows/deployments.py:animate_inbox", "animate-inbox")}
    for name, (entrypoint, flow_name) in expected.items():
        dep = deployments[name]
        assert dep.entrypoint == entrypoint
        assert (ROOT / entrypoint.split(":")[0]).is_file()
        assert _flow_function(entrypoint)[0] == flow_name
        assert dep.work_pool.name == "gpu-local"
        assert dep.enforce_parameter_schema is True
        assert dep.tags == ["masactrl-animate"]
    assert not deployments["animate"].schedules and not deployments["sweep"].schedules
    [schedule] = deployments["animate-inbox"].schedules
    assert (schedule.cron, schedule.timezone, schedule.active) == ("*/5 * * * *", "UTC", True)
    CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
    assert deployments["animate-inbox"].parameters == {"inbox": "inbox"}
    assert deployments["animate-inbox"].concurrency_limit.collision_strategy == "CANCEL_NEW"
    assert model.pull is None  # local target: prefect records the checkout at deploy time


def test_prefect_yaml_gpu_targets(prefect_yaml):
    targets = prefect_yaml["definitions"]["targets"]
    assert set(targets) == {"local", "docker", "kubernetes"}
    assert targets["local"]["work_pool"]["job_variables"]["env"]["MASACTRL_GPU_POOL"] == "local"
    docker = targets["docker"]["work_pool"]
    assert docker["name"] == "gpu-docker"
    [request] = docker["job_variables"]["container_create_kwargs"]["device_requests"]
    assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]]
    assert docker["job_variables"]["volumes"] == ["masactrl-data:/data"]
    k8s = targets["kubernetes"]["work_pool"]
    assert k8s["name"] == "gpu-k8s" and k8s["job_variables"]["gpu_count"] == 0
    for name in ("docker", "kubernetes"):
        env = targets[name]["work_pool"]["job_variables"]["env"]
        assert env["MASACTRL_DASK_ADDRESS"].startswith("tcp://dask-scheduler")
        assert not any(SECRET_WORDS.search(k) for k in env)
        [pull] = targets[name]["pull"]
        assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/masactrl-animate"
    # the Dockerfile puts the code where the container targets look for it
    assert re.search(r"^WORKDIR /opt/masactrl-animate$", (DEPLOY / "Dockerfile").read_text(), re.M)
    # the setup role re-targets with sed: exactly the two deployments' merge lines match
    text = (DEPLOY / "prefect.yaml").read_text()
    assert len(re.findall(r"^\s+<<: \*local\b", text, re.M)) == 3  # animate, sweep, animate-inbox
    retargeted = yaml.safe_load(re.sub(r"<<: \*local\b", "<<: *kubernetes", text))
    assert {d["work_pool"]["name"] for d in retargeted["deployments"]} == {"gpu-k8s"}


# --- Kubernetes ---------------------------------------------------------------------------


def _k8s_objects() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((K8S / resource).read_text()) if o]
    return objects


def _by(kind: str, name: str) -> dict:
    [obj] = [o for o in _k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def test_k8s_manifests_parse_and_cover_the_stack():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in _k8s_objects()}
    assert {
        ("Namespace", "masactrl"), ("PersistentVolumeClaim", "masactrl-data"), ("StatefulSet", "postgres"),
        ("Deployment", "prefect-server"), ("Service", "prefect-server"), ("Deployment", "dask-scheduler"),
        ("Service", "dask-scheduler"), ("Deployment", "dask-gpu-worker"), ("Deployment", "prefect-worker"),
        ("ServiceAccount", "masactrl-flow-run"), ("Role", "prefect-worker"), ("Job", "masactrl-setup"),
    } <= kinds
    assert not any(kind == "Secret" for kind, _ in kinds), "secrets are created by the operator, not shipped"
    for obj in _k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for c in _containers(obj):
                assert c.get("readinessProbe") or c.get("livenessProbe"), obj["metadata"]["name"]


def test_k8s_gpu_workers_and_shared_data():
    pvc = _by("PersistentVolumeClaim", "masactrl-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    worker = _by("Deployment", "dask-gpu-worker")
    [c] = _containers(worker)
    assert c["args"] == ["dask-worker"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert worker["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "masactrl-data"}}
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"]["value"] == "tcp://dask-scheduler:8786"
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "masactrl-secrets"
    setup_env = {e["name"]: e.get("value") for e in _containers(_by("Job", "masactrl-setup"))[0]["env"]}
    assert setup_env["MASACTRL_DEPLOY_TARGET"] == "kubernetes"
    assert (ROOT / setup_env["MASACTRL_WORK_POOL_TEMPLATE"]).is_file()
    assert setup_env["MASACTRL_GPU_LIMIT"] == str(worker["spec"]["replicas"])


def test_k8s_secrets_only_by_reference():
    for obj in _k8s_objects():
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for c in _containers(obj):
            for e in c.get("env", []):
                if SECRET_WORDS.search(e["name"]):
                    assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "masactrl-secrets", e


def test_k8s_work_pool_template():
    template = json.loads((K8S / "work-pool-template.json").read_text())
    variables = template["variables"]["properties"]
    assert variables["gpu_count"]["type"] == "integer" and variables["gpu_count"]["default"] == 0
    assert variables["data_claim"]["default"] == "masactrl-data"
    assert variables["namespace"]["default"] == "masactrl"
    assert variables["service_account_name"]["default"] == "masactrl-flow-run"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "{{ data_claim }}"}}]
    # every placeholder names a declared variable
    used = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= set(variables), used - set(variables)


def test_kustomize_renders_when_kubectl_is_available():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert all(o["metadata"].get("namespace") == "masactrl" for o in rendered if o["kind"] != "Namespace")
    images = {c["image"] for o in rendered if o["kind"] in ("Deployment", "StatefulSet", "Job") for c in _containers(o)}
    assert "masactrl-animate:latest" in images


# --- README -------------------------------------------------------------------------------


def test_readme_covers_what_an_operator_needs():
    text = (DEPLOY / "README.md").read_text()
    for needle in [
        "One GPU box", "Several GPU boxes", "Kubernetes", "model weights", "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_API_AUTH_STRING", "reverse proxy", "/data", "gpu-local", "prefect gcl", "--resources GPU=1",
        "MASACTRL_DASK_ADDRESS", "MASACTRL_MEDIA_URL", "MASACTRL_MEDIA_AUTH", "--no-media", "--media-port",
        "PREFECT_UI_API_URL=http://",
    ]:
        assert needle in text, needle
    for path in re.findall(r"`(deploy/[\w./-]+)`", text):
        assert (ROOT / path).exists() or path == "deploy/.env", path


# --- confinement of server-triggered runs -----------------------------------

ROOTS = "/data/inputs:/data/inbox:/data/models:/opt/masactrl-animate/examples"


def test_compose_confines_the_runs_it_starts(compose):
    services = compose["services"]
    for name in ("prefect-worker", "prefect-setup", "dask-worker"):
        env = _env(services[name])
        assert env["MASACTRL_INPUT_ROOTS"] == ROOTS, name
        assert env["MASACTRL_OUTPUT_ROOT"] == "/data/out", name
    # results land where the media server serves them; the roots are on the shared volume (or the image)
    media = services["media"]
    assert media["command"][media["command"].index("--root") + 1] == _env(services["prefect-worker"])["MASACTRL_OUTPUT_ROOT"]
    assert all(r.startswith(("/data/", "/opt/masactrl-animate/")) for r in ROOTS.split(":"))
    assert '"$DATA/inputs"' in ENTRYPOINT.read_text()  # /data/inputs exists on a fresh volume
    # an operator's value wins; an empty one lifts the confinement
    raw = load_compose("compose.yaml")
    lifted = interpolate(raw, {**SECRETS_ENV, "MASACTRL_INPUT_ROOTS": "", "MASACTRL_OUTPUT_ROOT": "/srv/out"})
    assert _env(lifted["services"]["prefect-worker"])["MASACTRL_INPUT_ROOTS"] == ""
    assert _env(lifted["services"]["prefect-worker"])["MASACTRL_OUTPUT_ROOT"] == "/srv/out"


def test_prefect_yaml_and_k8s_confine_flow_runs(prefect_yaml):
    targets = prefect_yaml["definitions"]["targets"]
    for name in ("docker", "kubernetes"):
        env = targets[name]["work_pool"]["job_variables"]["env"]
        assert env["MASACTRL_INPUT_ROOTS"] == ROOTS and env["MASACTRL_OUTPUT_ROOT"] == "/data/out", name
    # the local (process) target inherits the worker's environment, which compose sets
    assert "MASACTRL_INPUT_ROOTS" in (DEPLOY / "prefect.yaml").read_text().split("docker: &docker")[0]
    template = json.loads((K8S / "work-pool-template.json").read_text())
    default_env = template["variables"]["properties"]["env"]["default"]
    assert default_env == {"MASACTRL_INPUT_ROOTS": ROOTS, "MASACTRL_OUTPUT_ROOT": "/data/out"}


def test_env_example_and_readme_document_the_roots():
    example = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["MASACTRL_INPUT_ROOTS"] == ROOTS and example["MASACTRL_OUTPUT_ROOT"] == "/data/out"
    text = (DEPLOY / "README.md").read_text()
    for needle in ("MASACTRL_INPUT_ROOTS", "MASACTRL_OUTPUT_ROOT", "--input-root", "--output-root",
                   "What a run may read and write", "/data/inputs"):
        assert needle in text, needle


def test_the_inbox_schedule_waits_for_job_files(tmp_path):
    """`serve` over an empty inbox registers its cron paused (no runs of an empty folder in the
    run list); with a job file there it is active; without a cron there is nothing to pause."""
    from flows.deployments import build_deployments

    def inbox_deployment(**kwargs):
        return {d.name: d for d in build_deployments(tmp_path, **kwargs)}["animate-inbox"]

    empty = inbox_deployment()
    assert empty.paused is True and [s.schedule.cron for s in empty.schedules] == ["*/5 * * * *"]
    (tmp_path / "cat.yaml").write_text("source: {prompt: a cat}\n")
    assert inbox_deployment().paused is False
    (tmp_path / "cat.yaml").unlink()
    unscheduled = inbox_deployment(cron=None)
    assert unscheduled.paused is False and not unscheduled.schedules
