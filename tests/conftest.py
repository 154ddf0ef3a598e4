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
