"""Loading a checkpoint of any supported family (SD 1.x, SD 2.x, SDXL, SDXL-Turbo), an optional
OpenPose ControlNet, and LoRAs fused into the weights once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .errors import EngineInputError
from .families import checkpoint_configs, detect_family

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name for LoRAs


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


# ---------------------------------------------------------------------------------------- LoRA


def _lora_pairs(loras) -> list[tuple[str, float]]:
    pairs = []
    for i, item in enumerate(loras or ()):
        if isinstance(item, (str, os.PathLike)):
            item = (item, 1.0)
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise EngineInputError(f"loras[{i}]: give (path or hub id, scale), e.g. ('style.safetensors', 0.8)")
        source, scale = item
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise EngineInputError(f"loras[{i}].scale: {scale!r} is not a number; 1.0 applies the LoRA as trained")
        pairs.append((os.fspath(source), float(scale)))
    return pairs


def lora_file(source: str | os.PathLike, field: str = "lora") -> Path:
    """The local ``.safetensors`` file of a LoRA: a file, a folder holding diffusers' default file
    name, or a hub id already in the local hub cache (or downloadable when online)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise EngineInputError(f"{field}: {text!r} is not a .safetensors file; only safetensors LoRAs are loaded")
        return path
    if path.is_dir():
        if (path / LORA_WEIGHT_NAME).is_file():
            return path / LORA_WEIGHT_NAME
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise EngineInputError(f"{field}: {text!r} holds {len(found)} .safetensors files; name the file itself")
    if path.is_absolute() or text.startswith("."):
        raise EngineInputError(f"{field}: {text!r} does not exist; give a .safetensors file, a folder or a hub id")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(text, LORA_WEIGHT_NAME))
    except Exception as exc:  # offline, unknown repo, no such file: one message for all of them
        raise EngineInputError(f"{field}: cannot fetch {text!r} from the hub ({type(exc).__name__}); "
                               "download it and pass the local .safetensors file") from exc


def lora_digest(source: str | os.PathLike) -> str:
    """sha256 (hex) of a LoRA file's bytes: a cache key that changes whenever the weights change."""
    digest = hashlib.sha256()
    with open(lora_file(source), "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_LORA_SUFFIXES = {".lora_A.weight": "down", ".lora.down.weight": "down",
                  ".lora_B.weight": "up", ".lora.up.weight": "up"}


def check_lora_fits(state_dict: dict, components: dict, family: str, field: str = "lora") -> None:
    """Every LoRA weight must name a module of the pipeline with matching shapes; otherwise the
    LoRA was made for another model (family) and loading it would silently do nothing or fail late.

    ``state_dict`` is in diffusers' format (``unet.<module>.lora_A.weight``, ...), as returned by
    ``lora_state_dict``; ``components`` maps "unet", "text_encoder", ... to modules (real or on
    the meta device)."""
    problems, used = [], 0
    for key, tensor in state_dict.items():
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            continue  # alphas, DoRA magnitudes: their modules are checked through A/B
        prefix, _, module_name = key[: -len(suffix)].partition(".")
        component = components.get(prefix)
        if component is None:
            problems.append(f"{key}: no component {prefix!r}")
            continue
        try:
            module = component.get_submodule(module_name)
        except AttributeError:
            problems.append(f"{key}: the {prefix} has no module {module_name!r}")
            continue
        weight = getattr(module, "weight", None)
        if weight is None:
            problems.append(f"{key}: {module_name!r} has no weight")
            continue
        dim = 1 if _LORA_SUFFIXES[suffix] == "down" else 0
        if tensor.shape[dim] != weight.shape[dim]:
            problems.append(f"{key}: width {tensor.shape[dim]}, the module has {weight.shape[dim]}")
            continue
        used += 1
    if problems or not used:
        detail = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise EngineInputError(
            f"{field}: this LoRA does not fit the {family} checkpoint (made for another model family?): "
            f"{detail or 'no LoRA weights found'}. Use a LoRA trained for this base model"
        )


def _read_lora(source: str, pipe_class, field: str) -> tuple[dict, dict]:
    """(the file's tensors, the same in diffusers' key format)."""
    from safetensors.torch import load_file

    raw = load_file(lora_file(source, field))  # safetensors only: nothing is unpickled
    try:
        state_dict, _ = pipe_class.lora_state_dict(dict(raw))
    except Exception as exc:
        raise EngineInputError(f"{field}: {source!r} is not a LoRA diffusers can read: {exc}") from exc
    return raw, state_dict


def _fuse_loras(pipe, loras: list[tuple[str, float]]) -> None:
    """Load and fuse LoRAs already checked by ``check_loras``."""
    from safetensors.torch import load_file

    for i, (source, scale) in enumerate(loras):
        raw = load_file(lora_file(source, f"loras[{i}]"))
        name = f"lora_{i}"
        pipe.load_lora_weights(dict(raw), adapter_name=name)
        pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
        pipe.unload_lora_weights()  # drop the adapter layers; the fused weights stay


def check_loras(model, loras) -> str:
    """Check LoRAs against a checkpoint without loading its weights (the UNet and text encoders
    are built on the meta device from their configs); returns the family. For job validation."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection

    pairs = _lora_pairs(loras)
    model = _check_source("model", model)
    unet_config, scheduler_config, pipeline_class = checkpoint_configs(model)
    family = detect_family(unet_config, scheduler_config, pipeline_class)
    if not pairs:
        return family
    plain, _, _ = _pipeline_classes(family)
    with init_empty_weights():
        components = {"unet": UNet2DConditionModel.from_config(unet_config)}
        encoders = [("text_encoder", CLIPTextModel)]
        if family in ("sdxl", "sdxl-turbo"):
            encoders.append(("text_encoder_2", CLIPTextModelWithProjection))
        for name, cls in encoders:
            try:
                components[name] = cls(AutoConfig.from_pretrained(model, subfolder=name))
            except OSError:
                pass  # no such config: text-encoder LoRA weights then count as not fitting
    for i, (source, _) in enumerate(pairs):
        _, state_dict = _read_lora(source, plain, f"loras[{i}]")
        check_lora_fits(state_dict, components, family, f"loras[{i}]")
    return family


# ---------------------------------------------------------------------------------------- pipelines


def _pipeline_classes(family: str):
    import diffusers

    if family in ("sdxl", "sdxl-turbo"):
        return diffusers.StableDiffusionXLPipeline, diffusers.StableDiffusionXLControlNetPipeline, {}
    extra = dict(safety_checker=None, requires_safety_checker=False)
    return diffusers.StableDiffusionPipeline, diffusers.StableDiffusionControlNetPipeline, extra


def load_pipeline(model, controlnet=None, device=None, dtype=None, loras=()):
    """Load a pipeline of the checkpoint's family from a local folder or a hub id, safetensors only.

    The family comes from the checkpoint's configs (``families.detect_family``): SD 1.x / 2.x load
    as ``StableDiffusionPipeline``, SDXL / SDXL-Turbo as ``StableDiffusionXLPipeline`` (the
    ``...ControlNetPipeline`` with ``controlnet``, whose ``controlnet`` the engine uses for
    poses). CUDA gets fp16 and CPU fp32 unless ``dtype`` says otherwise; a VAE whose config says
    ``force_upcast`` (SDXL's overflows in fp16) stays in fp32. ``loras``: ``[(file, folder or hub
    id, scale), ...]`` checked against the model, then fused into the weights once.
    """
    from diffusers import ControlNetModel

    device, dtype = default_device_dtype(device, dtype)
    loras = _lora_pairs(loras)
    common = dict(dtype=dtype, use_safetensors=True)
    model = _check_source("model", model)
    family = check_loras(model, loras)  # a LoRA for another family fails here, before any weights load
    unet_config, _, _ = checkpoint_configs(model)
    plain, with_controlnet, extra = _pipeline_classes(family)
    try:
        if controlnet is None:
            pipe = plain.from_pretrained(model, **extra, **common)
        else:
            net = ControlNetModel.from_pretrained(_check_source("controlnet", controlnet), **common)
            if net.config.cross_attention_dim != unet_config.get("cross_attention_dim") or (
                net.config.addition_embed_type != unet_config.get("addition_embed_type")
            ):
                raise EngineInputError(
                    f"controlnet: {os.fspath(controlnet)!r} was made for another model family than this "
                    f"{family} checkpoint; use an OpenPose ControlNet for {family}"
                )
            pipe = with_controlnet.from_pretrained(model, controlnet=net, **extra, **common)
    except OSError as exc:  # hub ids offline, missing safetensors files, ...
        raise EngineInputError(f"model: could not load {model!r}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if loras:
        _fuse_loras(pipe, loras)
    pipe = pipe.to(device)
    if pipe.vae.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)
    pipe.family = family
    return pipe
