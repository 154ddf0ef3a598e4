"""Complete, tiny, diffusers-format checkpoints of each model family, written from a fixed seed.

This workplace has no network and no weights, so tests and the demo load these folders through
exactly the code path a real checkpoint takes (``load_pipeline`` -> ``from_pretrained``). Each
mirrors its family's real layout with tiny channels:

- ``sd15``: 4 UNet levels, 2 layers per block, 16 transformer blocks; one CLIP text encoder.
- ``sd2``: the same block layout with SD 2's linear projections, ``upcast_attention``,
  v-prediction, a text encoder of another width and a tokenizer that pads with "!".
- ``sdxl``: 3 levels (DownBlock2D + CrossAttnDownBlock2D x 2, transformer depths 1, 2, 10: 70
  transformer blocks like SDXL), two tokenizers and text encoders (the second with a projection
  giving the pooled embedding), ``addition_embed_type="text_time"``, a VAE with ``force_upcast``.
- ``sdxl-turbo``: the SDXL layout with SDXL-Turbo's scheduler config (Euler ancestral,
  "trailing" spacing); the engine runs DDIM math from its betas and spacing.

Every family comes with a matching OpenPose ControlNet in ``path/controlnet``. Images are
noise-like; what matters is the algorithm's invariants.
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

PAD_BANG = "!"  # SD 2.x and SDXL's second tokenizer pad with it

MARKER = "tiny_checkpoint.json"
# 2: the ControlNet responds to where the limbs are (see _tiny_controlnet); older folders are rewritten.
FORMAT_VERSION = 2

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
# SD 2.1 (768-v): the SD 1.5 schedule with v-prediction.
SD2_SCHEDULER = dict(SD15_SCHEDULER, prediction_type="v_prediction")
# SDXL base's scheduler config is Euler with this schedule; the engine reads betas and spacing.
SDXL_SCHEDULER = dict(SD15_SCHEDULER, interpolation_type="linear", use_karras_sigmas=False)
# SDXL-Turbo: Euler ancestral with "trailing" spacing (its 1-4 step schedule: 999, 749, ...).
SDXL_TURBO_SCHEDULER = dict(SD15_SCHEDULER, timestep_spacing="trailing")
# Neither SD's 0.18215 nor SDXL's 0.13025.
SDXL_VAE_SCALING_FACTOR = 0.3
FAMILIES = ("sd15", "sd2", "sdxl", "sdxl-turbo")


def _models(vocab_size: int, bos_id: int, eos_id: int, seed: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
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
    # Created last, so its weights never shift the random draws of the models above.
    return unet, vae, text_encoder, _tiny_controlnet(unet), DDIMScheduler(**SD15_SCHEDULER)


def _tiny_vae(scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _tiny_controlnet(unet):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    embedding = controlnet.controlnet_cond_embedding
    # A trained OpenPose ControlNet responds where the limbs are. Random signed kernels with biases
    # do not: a limb a few pixels wide on black averages out to a constant, so the frame would tell
    # *whether* there is a pose map, not *which*. Positive kernels normalised to a gain of 2 (SiLU
    # keeps positive values nearly linear) and no biases keep black at exactly 0 and carry every
    # limb down to latent resolution as a blurred, still local, response.
    for conv in (embedding.conv_in, *embedding.blocks):
        kernel = torch.randn(conv.weight.shape).abs()
        conv.weight.data = 2.0 * kernel / kernel.sum(dim=(1, 2, 3), keepdim=True)
        conv.bias.data.zero_()
    # Zero convolutions start at zero (a no-op) and a trained ControlNet is far from it. Signed,
    # bias-free weights here: the residuals then differ between two poses where the limbs differ.
    zero_convs = (embedding.conv_out, controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks)
    for conv, std in zip(zero_convs, (1.0,) + (0.3,) * (len(zero_convs) - 1)):
        torch.nn.init.normal_(conv.weight, std=std)
        conv.bias.data.zero_()
    return controlnet


def _text_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, hidden: int, heads: int,
                 act: str, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, **extra,
    )


def _sd2_models(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int):
    """SD 2.x: SD 1.x's block layout, linear projections, upcast attention, v-prediction."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=48,
        attention_head_dim=(2, 4, 4, 4),  # SD 2's per-level list (legacy name: number of heads)
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=8,
    )
    vae = _tiny_vae(VAE_SCALING_FACTOR, force_upcast=True)
    text_encoder = CLIPTextModel(_text_config(vocab_size, bos_id, eos_id, pad_id, 48, 4, "gelu"))
    return unet, vae, text_encoder, _tiny_controlnet(unet), DDIMScheduler(**SD2_SCHEDULER)


def _sdxl_models(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int, turbo: bool):
    """SDXL: 3 levels with transformer depths 1/2/10 (70 blocks), two text encoders, text_time."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    hidden_1, hidden_2, projection, time_dim = 16, 24, 16, 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 16, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(2, 2, 4),  # SDXL's [5, 10, 20] (legacy name: number of heads)
        cross_attention_dim=hidden_1 + hidden_2,  # both encoders' penultimate states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # 6 time ids (original size, crop top-left, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        norm_num_groups=8,
    )
    vae = _tiny_vae(SDXL_VAE_SCALING_FACTOR, force_upcast=True)
    text_encoder = CLIPTextModel(_text_config(vocab_size, bos_id, eos_id, eos_id, hidden_1, 2, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(vocab_size, bos_id, eos_id, pad_id, hidden_2, 4, "gelu", projection_dim=projection)
    )
    if turbo:
        scheduler = EulerAncestralDiscreteScheduler.from_config(SDXL_TURBO_SCHEDULER)
    else:
        scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    return unet, vae, text_encoder, text_encoder_2, _tiny_controlnet(unet), scheduler


def _write_family(staging: Path, family: str, seed: int) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    if family == "sd15":
        vocab = write_tokenizer_files(staging / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        unet, vae, text_encoder, controlnet, scheduler = _models(len(vocab), vocab[BOS], vocab[EOS], seed)
    elif family == "sd2":
        vocab = write_tokenizer_files(staging / "tokenizer", pad_token=PAD_BANG)
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        unet, vae, text_encoder, controlnet, scheduler = _sd2_models(
            len(vocab), vocab[BOS], vocab[EOS], vocab[PAD_BANG], seed)
    else:
        vocab = write_tokenizer_files(staging / "tokenizer")
        write_tokenizer_files(staging / "tokenizer_2", pad_token=PAD_BANG)
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(staging / "tokenizer_2")
        unet, vae, text_encoder, text_encoder_2, controlnet, scheduler = _sdxl_models(
            len(vocab), vocab[BOS], vocab[EOS], vocab[PAD_BANG], seed, turbo=family == "sdxl-turbo")
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        controlnet.save_pretrained(staging / "controlnet", safe_serialization=True)
        return
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


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, family: str = "sd15") -> Path:
    """Write the tiny checkpoint of ``family`` ("sd15", "sd2", "sdxl" or "sdxl-turbo") to ``path``
    (and its OpenPose ControlNet to ``path/controlnet``).

    The same seed and family write byte-identical weights. An existing tiny checkpoint with the same
    seed and family is kept as is; a folder that holds anything else is never overwritten.
    """
    if family not in FAMILIES:
        raise EngineInputError(f"family: {family!r} is not one of {FAMILIES}")
    path = Path(path)
    marker = {"seed": seed, "format": FORMAT_VERSION}
    if family != "sd15":  # the SD 1.x marker stays as it was, so existing folders are kept
        marker["family"] = family
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
        _write_family(staging, family, seed)
        (staging / MARKER).write_text(json.dumps(marker))
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
