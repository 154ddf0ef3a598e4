"""Loading a Stable Diffusion 1.x checkpoint (and an optional OpenPose ControlNet)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import EngineInputError


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def _check_source(name: str, value: str | os.PathLike) -> str:
    text = os.fspath(value)
    path = Path(text).expanduser()
    looks_local = path.is_absolute() or text.startswith(".") or path.exists()
    if looks_local and not path.is_dir():
        raise EngineInputError(
            f"{name}: {text!r} is not a folder; pass a diffusers checkpoint folder or a hub id"
        )
    if path.is_dir() and not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise EngineInputError(
            f"{name}: {text!r} holds no model_index.json or config.json; it is not a diffusers checkpoint"
        )
    return str(path) if path.is_dir() else text


def load_pipeline(model, controlnet=None, device=None, dtype=None):
    """Load an SD 1.x pipeline from a local folder or a hub id, safetensors only.

    CUDA gets fp16 and CPU fp32 unless ``dtype`` says otherwise. With ``controlnet`` the result is
    a ``StableDiffusionControlNetPipeline`` whose ``controlnet`` the engine uses for poses.
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    device, dtype = default_device_dtype(device, dtype)
    common = dict(dtype=dtype, use_safetensors=True)
    model = _check_source("model", model)
    try:
        if controlnet is None:
            pipe = StableDiffusionPipeline.from_pretrained(
                model, safety_checker=None, requires_safety_checker=False, **common
            )
        else:
            net = ControlNetModel.from_pretrained(_check_source("controlnet", controlnet), **common)
            pipe = StableDiffusionControlNetPipeline.from_pretrained(
                model, controlnet=net, safety_checker=None, requires_safety_checker=False, **common
            )
    except OSError as exc:  # hub ids offline, missing safetensors files, ...
        raise EngineInputError(f"model: could not load {model!r}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
