"""A complete, tiny, diffusers-format Stable Diffusion 1.x checkpoint written from a fixed seed.

This workplace has no network and no weights, so tests and the demo load this folder through
exactly the code path a real checkpoint takes (``load_pipeline`` -> ``from_pretrained``). The
layout mirrors SD 1.5 (4 UNet levels, 2 layers per block, 16 transformer blocks in execution
order) with tiny channels; its images are noise-like, what matters is the algorithm's invariants.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import EngineInputError
from .tokenizer_files import BOS, EOS, write_tokenizer_files

MARKER = "tiny_checkpoint.json"
FORMAT_VERSION = 1

# SD 1.5's scheduler, verbatim in the settings that matter for DDIM.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
# Deliberately not SD's 0.18215, so code that hard-codes it fails the tests.
VAE_SCALING_FACTOR = 0.25


def _models(vocab_size: int, bos_id: int, eos_id: int, seed: int):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=4,  # SD 1.x's legacy name for the number of heads
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=VAE_SCALING_FACTOR,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    # ControlNet's zero convolutions start at zero, which would make every pose map a no-op.
    # A trained ControlNet is far from zero there; give ours small random weights instead.
    zero_convs = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
    zero_convs += list(controlnet.controlnet_down_blocks)
    for conv in zero_convs:
        torch.nn.init.normal_(conv.weight, std=0.3)
        torch.nn.init.normal_(conv.bias, std=0.1)
    scheduler = DDIMScheduler(**SD15_SCHEDULER)
    return unet, vae, text_encoder, controlnet, scheduler


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``path`` (and its OpenPose ControlNet to ``path/controlnet``).

    The same seed writes byte-identical weights. An existing tiny checkpoint with the same seed is
    kept as is; a folder that holds anything else is never overwritten.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    path = Path(path)
    marker = {"seed": seed, "format": FORMAT_VERSION}
    if path.exists():
        existing = path / MARKER
        if existing.is_file() and json.loads(existing.read_text()) == marker:
            return path
        if existing.is_file():
            shutil.rmtree(path)  # our own checkpoint with another seed: safe to replace
        elif any(path.iterdir()):
            raise EngineInputError(
                f"path: {path} exists and is not a tiny checkpoint; pick an empty or new folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        vocab = write_tokenizer_files(staging / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        unet, vae, text_encoder, controlnet, scheduler = _models(len(vocab), vocab[BOS], vocab[EOS], seed)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        controlnet.save_pretrained(staging / "controlnet", safe_serialization=True)
        (staging / MARKER).write_text(json.dumps(marker))
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
