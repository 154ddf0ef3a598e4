"""What a model name in a job means: the tiny offline checkpoint, a local folder or a hub id.

``tiny`` is a test fixture with random weights (``masactrl_engine.tiny``): it is written once per
machine, from a fixed seed, and its frames are noise by design.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from flows.job.model import TINY, TINY_MODELS, ModelSpec
from flows.jobdir.frames_io import folder_lock

TINY_SEED = 0
TINY_NOTE = ("model {name!r} has random weights: its frames are noise by design (it exists for tests and demos); "
             "name a real checkpoint in model.model for pictures")


def tiny_checkpoint_dir(name: str = TINY) -> Path:
    """Where a tiny checkpoint lives: $MASACTRL_TINY_DIR (the SD 1.x one; the other families beside
    it, suffixed with their family), else the user's cache folder."""
    family = TINY_MODELS[name]
    env = os.environ.get("MASACTRL_TINY_DIR")
    if env:
        base = Path(env).expanduser()
        return base if family == "sd15" else base.with_name(f"{base.name}-{family}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    suffix = "" if family == "sd15" else f"-{family}"
    return cache / "masactrl-animate" / f"tiny-seed{TINY_SEED}{suffix}"


def ensure_tiny_checkpoint(name: str = TINY) -> Path:
    """Write a tiny checkpoint once; a file lock keeps parallel worker processes from racing."""
    from masactrl_engine.tiny import make_tiny_checkpoint

    path = tiny_checkpoint_dir(name)
    with folder_lock(path):
        return make_tiny_checkpoint(path, seed=TINY_SEED, family=TINY_MODELS[name])


def resolve_model(name: str) -> str:
    return str(ensure_tiny_checkpoint(name)) if name in TINY_MODELS else name


def resolve_controlnet(name: Optional[str], model: str = TINY) -> Optional[str]:
    """'tiny' is the ControlNet written beside the tiny model of the job's family."""
    if name is None:
        return None
    if name == TINY:
        return str(ensure_tiny_checkpoint(model if model in TINY_MODELS else TINY) / "controlnet")
    return name


def _identity(name: Optional[str], family_of: Optional[str] = None) -> Optional[str]:
    if name == TINY and family_of is not None:
        name = family_of  # the tiny ControlNet is the one of the model's family
    if name in TINY_MODELS:
        from masactrl_engine.tiny import FORMAT_VERSION

        return f"{name}:seed{TINY_SEED}:format{FORMAT_VERSION}"
    return name


def lora_digests(model: ModelSpec) -> list[str]:
    from masactrl_engine.loading import lora_digest

    return [lora_digest(lora.path) for lora in model.loras]


def model_identity(model: ModelSpec) -> dict:
    """What the weights are, beyond their names: the tiny models' format version (a new format
    draws other noise) and each LoRA file's bytes."""
    family_of = model.model if model.model in TINY_MODELS else None
    return {"model": _identity(model.model), "controlnet": _identity(model.controlnet, family_of),
            "loras": lora_digests(model)}


def is_tiny(model: ModelSpec) -> bool:
    return model.model in TINY_MODELS


def model_configs(model: ModelSpec):
    """(unet config, scheduler config, pipeline class) read without loading weights, or None when
    they cannot be had cheaply (a hub id not in the local cache: the worker will find out)."""
    from masactrl_engine import EngineInputError
    from masactrl_engine.families import checkpoint_configs

    try:
        return checkpoint_configs(resolve_model(model.model))
    except EngineInputError:
        if Path(model.model).expanduser().is_dir():
            raise
        return None
