"""Shared fixtures. Everything runs offline on the tiny checkpoint the project writes itself."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect reads its settings when it is first imported: point it at a throw-away home first.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The tests act as a deployment whose default checkpoint is the tiny one (jobs that name no model).
os.environ.setdefault("MASACTRL_MODEL", "tiny")

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of the tiny SD 1.x checkpoint (its OpenPose ControlNet in ``/controlnet``)."""
    from masactrl_engine.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_checkpoint):
    """The tiny pipeline with its ControlNet, fp32 on the CPU. Shared: do not mutate it."""
    from masactrl_engine import load_pipeline

    return load_pipeline(tiny_checkpoint, controlnet=tiny_checkpoint / "controlnet", device="cpu")


@pytest.fixture(scope="session")
def prefect_harness(tiny_checkpoint):
    """A temporary Prefect API (SQLite) for the whole session; flows find the tiny model through
    MASACTRL_TINY_DIR (started once: it costs ~30 s)."""
    os.environ["MASACTRL_TINY_DIR"] = str(tiny_checkpoint)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


_FAMILY_PIPES: dict = {}


@pytest.fixture(scope="session")
def tiny_family_checkpoint(tmp_path_factory):
    """``tiny_family_checkpoint(family)``: path of that family's tiny checkpoint (written once)."""
    from masactrl_engine.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("family-models")
    return lambda family: make_tiny_checkpoint(root / family, family=family)


@pytest.fixture(scope="session")
def tiny_family_pipe(tiny_pipe, tiny_family_checkpoint):
    """``tiny_family_pipe(family)``: that family's tiny pipeline with its ControlNet, fp32 on the CPU
    (loaded once per session; sd15 is ``tiny_pipe``). Shared: do not mutate it."""
    from masactrl_engine import load_pipeline

    def get(family):
        if family == "sd15":
            return tiny_pipe
        if family not in _FAMILY_PIPES:
            path = tiny_family_checkpoint(family)
            _FAMILY_PIPES[family] = load_pipeline(path, controlnet=path / "controlnet", device="cpu")
        return _FAMILY_PIPES[family]

    return get


@pytest.fixture(params=["sd15", "sdxl"])
def family_pipe(request, tiny_family_pipe):
    """Runs a test on the tiny SD 1.5 and the tiny SDXL pipeline."""
    return tiny_family_pipe(request.param)


@pytest.fixture(autouse=True)
def _masactrl_environment_restored():
    """Commands under test (serve, media) set MASACTRL_* variables for the runs they start; put them
    back after every test so that one test's server settings never leak into the next."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MASACTRL_")}
    yield
    for name in [k for k in os.environ if k.startswith("MASACTRL_") and k not in before]:
        del os.environ[name]
    os.environ.update(before)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Benchmarks run in-process with --threads 1; the thread count changes float reduction order,
    so a test must not inherit another test's count."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
