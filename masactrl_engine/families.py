"""Model families (SD 1.x, SD 2.x, SDXL, SDXL-Turbo), told apart by the checkpoint's own config.

Nothing here needs weights: every function reads configs (plain dicts or diffusers ``FrozenDict``),
so the flows can validate a job (e.g. ``start_layer`` against the model's block count) before any
model is loaded. Names never decide the family: a fine-tune called "my-sdxl" that is really SD 1.5
is SD 1.5.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import EngineInputError

FAMILIES = ("sd15", "sd2", "sdxl", "sdxl-turbo")

# Cross-attention maps for automatic masks come from the UNet level at 1/32 of the image side
# (16x16 at 512² in the published code; 32x32 at 1024² for SDXL). With the usual VAE factor of 8
# that is latent / 4, i.e. the third resolution level (index 2) of the UNet.
MASK_SIDE_FRACTION = 32


@dataclass(frozen=True)
class FamilyDefaults:
    """Starting points per family. ``start_layer`` comes from the published code where it has one
    (SD: 10 of 16; SDXL: its SDXL script uses step 4 with layers 44, 54 or 64 of 70)."""

    family: str
    size: int  # the side the family was trained at
    num_steps: int
    guidance_scale: float
    start_step: int
    start_layer: int
    start_layers_published: tuple[int, ...]


DEFAULTS = {
    "sd15": FamilyDefaults("sd15", 512, 50, 7.5, 4, 10, (10,)),
    "sd2": FamilyDefaults("sd2", 768, 50, 7.5, 4, 10, (10,)),
    "sdxl": FamilyDefaults("sdxl", 1024, 50, 7.5, 4, 44, (44, 54, 64)),
    # Turbo: few steps and no guidance (one UNet sample per frame per step); control from step 0.
    "sdxl-turbo": FamilyDefaults("sdxl-turbo", 512, 4, 0.0, 0, 44, (44, 54, 64)),
}

_CROSS_DOWN = {"CrossAttnDownBlock2D"}
_CROSS_UP = {"CrossAttnUpBlock2D"}
_PLAIN_DOWN = {"DownBlock2D"}
_PLAIN_UP = {"UpBlock2D"}


def _get(config: Mapping[str, Any] | Any, key: str, default=None):
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def is_sdxl_unet(unet_config) -> bool:
    return _get(unet_config, "addition_embed_type") == "text_time"


def detect_family(unet_config, scheduler_config=None, pipeline_class: str | None = None) -> str:
    """The family of a checkpoint from its UNet config (and scheduler config / pipeline class).

    SDXL: ``addition_embed_type == "text_time"`` (pooled text + size/crop time ids), or an SDXL
    pipeline class; SDXL-Turbo is an SDXL whose scheduler config has "trailing" timestep spacing
    (its few-step schedule). SD 2.x: v-prediction, the OpenCLIP-H width of 1024 or the linear
    projections SD 2 introduced. Everything else with an SD-style UNet is SD 1.x.
    """
    sdxl = is_sdxl_unet(unet_config) or (pipeline_class or "").startswith("StableDiffusionXL")
    if sdxl:
        spacing = _get(scheduler_config, "timestep_spacing") if scheduler_config is not None else None
        return "sdxl-turbo" if spacing == "trailing" else "sdxl"
    prediction = _get(scheduler_config, "prediction_type") if scheduler_config is not None else None
    if (prediction == "v_prediction" or _get(unet_config, "cross_attention_dim") == 1024
            or _get(unet_config, "use_linear_projection")):
        return "sd2"
    return "sd15"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def checkpoint_configs(model: str | os.PathLike) -> tuple[dict, dict, str | None]:
    """(unet config, scheduler config, pipeline class name) of a local checkpoint folder, or of a
    hub id found in the local hub cache (never downloads weights)."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        for part in ("unet/config.json", "scheduler/scheduler_config.json"):
            if not (path / part).is_file():
                raise EngineInputError(f"model: {path} has no {part}; point it at a diffusers checkpoint folder")
        index = path / "model_index.json"
        pipeline_class = _read_json(index).get("_class_name") if index.is_file() else None
        return (_read_json(path / "unet/config.json"),
                _read_json(path / "scheduler/scheduler_config.json"), pipeline_class)
    try:
        from diffusers import DiffusionPipeline, UNet2DConditionModel
        from diffusers.schedulers import DDIMScheduler

        unet = UNet2DConditionModel.load_config(os.fspath(model), subfolder="unet")
        scheduler = DDIMScheduler.load_config(os.fspath(model), subfolder="scheduler")
        index = DiffusionPipeline.load_config(os.fspath(model))
    except (OSError, ValueError) as exc:
        raise EngineInputError(f"model: cannot read the configs of {os.fspath(model)!r}: {exc}") from exc
    return dict(unet), dict(scheduler), index.get("_class_name")


def family_of_checkpoint(model: str | os.PathLike) -> str:
    unet, scheduler, pipeline_class = checkpoint_configs(model)
    return detect_family(unet, scheduler, pipeline_class)


@dataclass(frozen=True)
class BlockInfo:
    index: int  # execution order, counting from 0 (the published code's layer numbering)
    part: str  # "down", "mid" or "up"
    level: int  # resolution level: 0 = latent size, each level halves the side
    module: str  # e.g. "up_blocks.0.attentions.1" (its transformer_blocks.k hold the blocks)


def _as_list(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _depths(spec, layers: int) -> list[int]:
    """Transformer depth of each layer of a block: an int for all, or one per layer."""
    return [int(d) for d in spec] if isinstance(spec, (list, tuple)) else [int(spec)] * layers


def transformer_blocks(unet_config) -> list[BlockInfo]:
    """Every transformer block of an SD-style UNet in execution order (down, mid, up), from the
    config alone. SD 1.x/2.x: 16; SDXL: 70."""
    down_types = list(_get(unet_config, "down_block_types"))
    up_types = list(_get(unet_config, "up_block_types"))
    n = len(down_types)
    layers = _as_list(_get(unet_config, "layers_per_block", 2), n)
    depth = _get(unet_config, "transformer_layers_per_block", 1)
    depth = _as_list(depth, n) if not isinstance(depth, int) else [depth] * n
    reverse = _get(unet_config, "reverse_transformer_layers_per_block")
    up_depth = list(reverse) if reverse is not None else list(reversed(depth))
    up_layers = list(reversed(layers))
    blocks: list[BlockInfo] = []

    def add(part: str, level: int, module: str, count: int) -> None:
        for _ in range(count):
            blocks.append(BlockInfo(len(blocks), part, level, module))

    for i, kind in enumerate(down_types):
        if kind in _CROSS_DOWN:
            for j, d in enumerate(_depths(depth[i], layers[i])):
                add("down", i, f"down_blocks.{i}.attentions.{j}", d)
        elif kind not in _PLAIN_DOWN:
            raise EngineInputError(f"model: down block type {kind!r} is not an SD-style UNet block")
    mid = _get(unet_config, "mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid == "UNetMidBlock2DCrossAttn":
        add("mid", n - 1, "mid_block.attentions.0", _depths(depth[-1], 1)[0])
    elif mid not in (None, "UNetMidBlock2D"):
        raise EngineInputError(f"model: mid block type {mid!r} is not an SD-style UNet block")
    for i, kind in enumerate(up_types):
        if kind in _CROSS_UP:
            for j, d in enumerate(_depths(up_depth[i], up_layers[i] + 1)):
                add("up", n - 1 - i, f"up_blocks.{i}.attentions.{j}", d)
        elif kind not in _PLAIN_UP:
            raise EngineInputError(f"model: up block type {kind!r} is not an SD-style UNet block")
    return blocks


def count_transformer_blocks(unet_config) -> int:
    """How many transformer blocks (MasaCtrl "layers") the UNet has: valid ``start_layer`` values
    are ``0 .. count - 1``."""
    return len(transformer_blocks(unet_config))


def check_start_layer(start_layer: int, unet_config, field: str = "start_layer") -> None:
    """One clear error when ``start_layer`` is outside the model's range."""
    count = count_transformer_blocks(unet_config)
    family = detect_family(unet_config)
    if not isinstance(start_layer, int) or not 0 <= start_layer < count:
        suggestion = DEFAULTS[family].start_layer
        raise EngineInputError(
            f"{field}: {start_layer!r} is outside this model's transformer blocks 0..{count - 1} "
            f"({family}, {count} blocks); e.g. {suggestion} (the published starting point)"
        )


def num_levels(unet_config) -> int:
    return len(_get(unet_config, "down_block_types"))


def mask_level(unet_config, vae_scale_factor: int = 8) -> int:
    """Index of the UNet level at 1/32 of the image side (latent / 4 with a VAE factor of 8)."""
    level, side = 0, vae_scale_factor
    while side < MASK_SIDE_FRACTION:
        level, side = level + 1, side * 2
    if side != MASK_SIDE_FRACTION or level >= num_levels(unet_config):
        raise EngineInputError(
            f"mask: this UNet has no level at 1/{MASK_SIDE_FRACTION} of the image side (VAE factor "
            f"{vae_scale_factor}, {num_levels(unet_config)} levels); give explicit mask images instead"
        )
    return level


def mask_level_blocks(unet_config, vae_scale_factor: int = 8) -> list[int]:
    """Transformer blocks whose cross-attention feeds automatic masks (those at the mask level).
    SD 1.x: 4, 5 (encoder) and 7, 8, 9 (decoder; the mid block is one level lower);
    SDXL: 4..63 (encoder's 10-deep level, the mid block and the decoder's first level)."""
    level = mask_level(unet_config, vae_scale_factor)
    return [b.index for b in transformer_blocks(unet_config) if b.level == level]
