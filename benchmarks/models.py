"""Benchmark models, written once as diffusers folders and loaded through ``load_pipeline``.

- ``tiny``: the project's tiny checkpoint (``make_tiny_checkpoint``), for CI and smoke runs.
- ``sd15``: Stable Diffusion 1.5's real UNet / VAE / CLIP text-encoder *configurations* with
  random weights (this workplace has no weights and no network). Speed and memory depend on the
  shapes, not on the values, so it measures where the UNet dominates; its images are noise.
  The tokenizer is the project's small one (``write_tokenizer_files``): only the vocabulary size
  differs from CLIP's (an embedding-table lookup, no cost difference worth naming).

Both go through exactly the code path of a real checkpoint (``from_pretrained``, safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_CACHE = Path(os.environ.get("MASACTRL_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
MODELS = ("tiny", "sd15")
SD15_MARKER = "sd15_random.json"
SD15_FORMAT = 1

# diffusers' UNet2DConditionModel defaults are SD 1.x's layout; spelled out so the benchmark does
# not change if those defaults ever do.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14's text tower (what SD 1.5 uses), all 12 layers: it runs once per distinct prompt
# in the engine and 4 times per frame in the published schedule, so it is kept full size.
SD15_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)


def tiny_checkpoint(cache: Path = DEFAULT_CACHE) -> Path:
    from masactrl_engine.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(Path(cache) / "tiny")


def sd15_checkpoint(cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """Write (once) the SD 1.5-sized random checkpoint to ``cache/sd15-random`` (~4.3 GB fp32)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from masactrl_engine.tiny import SD15_SCHEDULER
    from masactrl_engine.tiny.tokenizer_files import BOS, EOS, write_tokenizer_files

    path = Path(cache) / "sd15-random"
    marker = {"seed": seed, "format": SD15_FORMAT}
    if (path / SD15_MARKER).is_file() and json.loads((path / SD15_MARKER).read_text()) == marker:
        return path
    if path.exists():
        shutil.rmtree(path)  # only ever our own, half-written or older-format folder
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sd15-", dir=path.parent))
    try:
        vocab = write_tokenizer_files(staging / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS],
            **SD15_TEXT,
        ))
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**SD15_VAE), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET), scheduler=DDIMScheduler(**SD15_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / SD15_MARKER).write_text(json.dumps(marker))
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def checkpoint(name: str, cache: Path = DEFAULT_CACHE) -> Path:
    if name == "tiny":
        return tiny_checkpoint(cache)
    if name == "sd15":
        return sd15_checkpoint(cache)
    raise ValueError(f"model: {name!r} is not one of {MODELS}")


def load(name: str, device: str = "cpu", dtype: torch.dtype | None = None, cache: Path = DEFAULT_CACHE):
    """The pipeline, loaded with the project's own ``load_pipeline`` (the real code path)."""
    from masactrl_engine import load_pipeline

    return load_pipeline(checkpoint(name, cache), device=device, dtype=dtype)
