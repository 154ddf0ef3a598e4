"""Opt-in speed settings for a loaded pipeline: channels-last memory format and ``torch.compile``.

Nothing here changes what is computed, only how: the same weights and the same kernels' maths.
The engine never calls this on its own; callers (the benchmarks, a flow) opt in::

    pipe = optimize_pipeline(load_pipeline(path), compile=True)

``torch.compile`` is applied *regionally*, to the UNet's (and ControlNet's) processor-free parts:
its ResNet blocks, up/down-samplers and transformer feed-forwards. The engine swaps attention
processors for every pass and keys their per-call state by step; compiling whole transformer
blocks (diffusers' ``compile_repeated_blocks``) or the whole UNet would guard on those Python
objects and recompile at every pass and step. Attention itself already runs in one fused
``scaled_dot_product_attention`` kernel. Compiled regions may first recompile once per new batch
shape (then dynamic shapes take over); warm up before timing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger("masactrl_engine")

# Class names of the regions compiled by ``optimize_pipeline(..., compile=True)``.
COMPILED_REGIONS = ("ResnetBlock2D", "Downsample2D", "Upsample2D", "FeedForward")


@dataclass
class Optimizations:
    """What ``optimize_pipeline`` applied, for logs and benchmark headers."""

    channels_last: list[str] = field(default_factory=list)
    compiled: dict[str, int] = field(default_factory=dict)  # model name -> compiled regions

    def describe(self) -> str:
        parts = [f"channels_last={','.join(self.channels_last) or 'off'}"]
        regions = sum(self.compiled.values())
        parts.append(f"compile={'off' if not regions else f'{regions} regions ' + ','.join(self.compiled)}")
        return " ".join(parts)


def _models(pipe) -> dict[str, torch.nn.Module]:
    names = ("unet", "vae", "controlnet")
    return {name: getattr(pipe, name) for name in names if isinstance(getattr(pipe, name, None), torch.nn.Module)}


def compile_regions(model: torch.nn.Module, **compile_kwargs) -> int:
    """``torch.compile`` every processor-free region of ``model`` in place; returns how many."""
    regions = [m for m in model.modules()
               if type(m).__name__ in COMPILED_REGIONS and not getattr(m, "_masactrl_compiled", False)]
    for module in regions:
        module.compile(**compile_kwargs)
        module._masactrl_compiled = True
    # All instances of a class share one code object, hence one dynamo cache whose default limit
    # (8 specialisations) SD's many channel widths exceed: past it, regions silently run eager.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 2 * len(regions) + 8)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * len(regions) + 64)
    return len(regions)


def optimize_pipeline(pipe, channels_last: bool | None = None, compile: bool = False, **compile_kwargs):
    """Apply channels-last and/or regional ``torch.compile`` to ``pipe``'s UNet, VAE and ControlNet.

    ``channels_last=None`` means: on CUDA yes (convolutions in fp16 run faster on tensor cores in
    NHWC), on the CPU no (measured slower or equal there; see benchmarks/RESULTS.md). Returns the
    pipeline (modified in place) with ``pipe.masactrl_optimizations`` describing what was done.
    """
    models = _models(pipe)
    if "unet" not in models:
        raise ValueError("pipe: expected a diffusers pipeline with a .unet")
    device = models["unet"].device
    if channels_last is None:
        channels_last = device.type == "cuda"
    done = Optimizations()
    if channels_last:
        for name, model in models.items():
            model.to(memory_format=torch.channels_last)
            done.channels_last.append(name)
    if compile:
        for name in ("unet", "controlnet"):
            if name in models:
                done.compiled[name] = compile_regions(models[name], **compile_kwargs)
    log.info("optimize_pipeline: %s", done.describe())
    pipe.masactrl_optimizations = done
    return pipe
