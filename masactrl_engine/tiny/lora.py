"""A tiny random LoRA for a checkpoint, written offline in diffusers' LoRA file format.

Keys are ``unet.<module>.lora_A.weight`` (rank x in) and ``unet.<module>.lora_B.weight``
(out x rank) for every attention projection of the UNet: what ``save_lora_weights`` writes for
a peft LoRA. Random B (unlike training's zero start) so that the LoRA visibly changes frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def make_tiny_lora(path: str | os.PathLike, checkpoint: str | os.PathLike, seed: int = 0, rank: int = 2,
                   std: float = 0.2) -> Path:
    """Write ``path`` (a ``.safetensors`` file) with a LoRA fitting ``checkpoint``'s UNet."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    config = json.loads((Path(checkpoint) / "unet" / "config.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(PROJECTIONS) or ".attn" not in name:
            continue
        out_features, in_features = module.weight.shape
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * std
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * std
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
