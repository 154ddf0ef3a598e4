"""Shared fixtures. Everything runs offline on the tiny checkpoint the project writes itself."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of the tiny SD 1.x checkpoint (its OpenPose ControlNet in ``/controlnet``)."""
    from masactrl_engine import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_checkpoint):
    """The tiny pipeline with its ControlNet, fp32 on the CPU. Shared: do not mutate it."""
    from masactrl_engine import load_pipeline

    return load_pipeline(tiny_checkpoint, controlnet=tiny_checkpoint / "controlnet", device="cpu")
