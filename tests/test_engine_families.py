"""Model families: detection from configs, block counts, per-family text conditioning, DDIM spacing
and v-prediction, SDXL synthesis against the published procedure, guidance off, Turbo, LoRA."""

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from masactrl_engine import ControlConfig, EngineInputError, SequenceEngine, load_pipeline
from masactrl_engine.attention import attention_layers
from masactrl_engine.conditioning import PromptEncoder
from masactrl_engine.ddim import DDIM
from masactrl_engine.families import (
    check_start_layer, count_transformer_blocks, detect_family, family_of_checkpoint, mask_level,
    mask_level_blocks,
)
from masactrl_engine.loading import check_loras, lora_digest
from masactrl_engine.masks import MASK_LEVEL, level_shapes
from masactrl_engine.tiny import make_tiny_lora

# The block layouts of the real checkpoints (their unet/config.json, the fields that matter).
SD15 = dict(down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2, cross_attention_dim=768, attention_head_dim=8)
SD21 = dict(SD15, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
            upcast_attention=True)
SDXL = dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
            cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)


def _image(height=64, width=64, seed=1):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def engine(pipe, **settings):
    settings.setdefault("num_steps", 4)
    settings.setdefault("start_step", 1)
    settings.setdefault("start_layer", 10 if pipe.unet.config.addition_embed_type is None else 44)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


# ------------------------------------------------------------------------------ configs only


@pytest.mark.parametrize("config, blocks", [(SD15, 16), (SD21, 16), (SDXL, 70)])
def test_block_count_from_the_config_equals_the_built_unet(config, blocks):
    from accelerate import init_empty_weights

    assert count_transformer_blocks(config) == blocks
    with init_empty_weights():  # real sizes, no memory
        unet = UNet2DConditionModel.from_config(config)
    layers = attention_layers(unet)
    assert 1 + max(layer.block for layer in layers) == blocks
    assert len(layers) == 2 * blocks  # self- and cross-attention per block


def test_family_detection_reads_configs_not_names():
    assert detect_family(SD15, {"prediction_type": "epsilon"}) == "sd15"
    assert detect_family(SD21, {"prediction_type": "v_prediction"}) == "sd2"
    assert detect_family(SD21, {"prediction_type": "epsilon"}) == "sd2"  # SD 2.x-base: OpenCLIP width
    assert detect_family(SDXL, {"timestep_spacing": "leading"}) == "sdxl"
    assert detect_family(SDXL, {"timestep_spacing": "trailing"}) == "sdxl-turbo"


def test_tiny_checkpoints_have_their_family_layout(tiny_family_checkpoint, tmp_path):
    import shutil

    for family, blocks in [("sd15", 16), ("sd2", 16), ("sdxl", 70), ("sdxl-turbo", 70)]:
        path = tiny_family_checkpoint(family)
        assert family_of_checkpoint(path) == family
        # A misleading folder name changes nothing.
        renamed = shutil.copytree(path / "unet", tmp_path / f"not-{family}" / "unet")
        shutil.copytree(path / "scheduler", renamed.parent / "scheduler")
        assert family_of_checkpoint(renamed.parent) == family
        assert count_transformer_blocks(UNet2DConditionModel.load_config(path / "unet")) == blocks


def test_mask_level_is_one_32nd_of_the_side_and_its_blocks():
    assert mask_level(SD15) == mask_level(SDXL) == MASK_LEVEL == 2
    assert mask_level_blocks(SD15) == [4, 5, 7, 8, 9]  # encoder level 3 and the decoder's first cross level
    assert mask_level_blocks(SDXL) == list(range(4, 64))  # the 10-deep level: encoder, mid, decoder
    assert level_shapes(128, 128, 3)[MASK_LEVEL] == (32, 32)  # SDXL at 1024²
    assert level_shapes(96, 128, 3)[MASK_LEVEL] == (24, 32)  # 768x1024
    with pytest.raises(EngineInputError, match="mask: this UNet has no level at 1/32"):
        mask_level(dict(SD15, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"]))


def test_start_layer_is_checked_against_the_model():
    check_start_layer(69, SDXL)
    with pytest.raises(EngineInputError, match=r"start_layer: 16 is outside this model's transformer blocks 0\.\.15 "
                                               r"\(sd15, 16 blocks\); e\.g\. 10"):
        check_start_layer(16, SD15)
    with pytest.raises(EngineInputError, match=r"0\.\.69 \(sdxl, 70 blocks\); e\.g\. 44"):
        check_start_layer(70, SDXL)


@pytest.mark.parametrize("family, steps", [("sdxl-turbo", 4), ("sdxl-turbo", 1), ("sd2", 6)])
def test_ddim_spacing_and_v_prediction_match_diffusers(tiny_family_checkpoint, family, steps):
    config = DDIMScheduler.load_config(tiny_family_checkpoint(family), subfolder="scheduler")
    ddim = DDIM.from_config(config, steps)
    forward, inverse = DDIMScheduler.from_config(config), DDIMInverseScheduler.from_config(config)
    forward.set_timesteps(steps)
    inverse.set_timesteps(steps)
    assert list(ddim.timesteps) == forward.timesteps.tolist()
    if family == "sdxl-turbo":
        assert ddim.timesteps == {4: (999, 749, 499, 249), 1: (999,)}[steps]
    else:
        assert ddim.prediction_type == "v_prediction"
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(forward.timesteps.tolist()):
        x, out = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
        torch.testing.assert_close(ddim.denoise(out, i, x), forward.step(out, t, x).prev_sample, atol=1e-5, rtol=1e-5)
    if config["prediction_type"] == "epsilon":  # diffusers' inverse scheduler handles epsilon only
        assert [ddim.inversion_timestep(k) for k in range(steps)] == inverse.timesteps.tolist()


# ------------------------------------------------------------------------------ text conditioning


def test_sdxl_conditioning_equals_the_sdxl_pipeline(tiny_family_pipe):
    pipe = tiny_family_pipe("sdxl")
    encoder = PromptEncoder(pipe, torch.device("cpu"), torch.float32)
    prompt_embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        "a cat jumping", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    rows = encoder.rows(["a cat jumping"], "", guided=True)
    torch.testing.assert_close(rows.hidden, torch.cat([negative, prompt_embeds]))
    torch.testing.assert_close(rows.pooled, torch.cat([negative_pooled, pooled]))
    assert not rows.hidden[0].any()  # force_zeros_for_empty_prompt: the published script's negative
    time_ids = pipe._get_add_time_ids((64, 96), (0, 0), (64, 96), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    added = encoder.added_cond_kwargs(rows, 64, 96)
    torch.testing.assert_close(added["time_ids"], time_ids.repeat(2, 1))
    assert added["text_embeds"] is rows.pooled
    # Without guidance: the prompt rows only.
    assert encoder.rows(["a cat", "a dog"], "", guided=False).rows == 2


def test_prompt_cache_stays_at_its_bound(tiny_pipe):
    eng = SequenceEngine(tiny_pipe, ControlConfig(num_steps=2, start_step=0), progress=False, prompt_cache_size=16)
    first = eng._embed("prompt 0").hidden
    for i in range(500):
        eng._embed(f"prompt {i}")
        assert len(eng.text) <= 16
    assert len(eng.text) == 16
    again = eng._embed("prompt 0").hidden  # evicted long ago: encoded again, same numbers
    assert again is not first and torch.equal(again, first)
    assert eng._embed("prompt 0").hidden is again  # the most recent stays cached
    with pytest.raises(EngineInputError, match="prompt_cache_size: -1 must be a whole number >= 0"):
        SequenceEngine(tiny_pipe, ControlConfig(num_steps=2, start_step=0), prompt_cache_size=-1)


def test_renders_with_many_distinct_prompts_keep_the_cache_bounded(tiny_pipe):
    eng = SequenceEngine(tiny_pipe, ControlConfig(num_steps=1, start_step=0, guidance_scale=1.0), progress=False,
                         prompt_cache_size=8)
    inv = eng.invert(_image())
    for i in range(0, 60, 20):
        eng.render(inv, "a photo of a cat", [f"a cat number {j}" for j in range(i, i + 20)], batch_size=20,
                   output_type="latent")
        assert len(eng.text) == 8


# ------------------------------------------------------------------------------ SDXL synthesis


class PublishedAttention:
    """The published MutualSelfAttentionControl(start_step, start_layer, model_type="SDXL"): counts
    attention calls (self, cross per block) to find block and step; in controlled self-attention,
    every row of a CFG half attends to that half's source row (the batch's first row)."""

    def __init__(self, start_step, start_layer, blocks):
        self.start_step, self.start_layer, self.calls_per_step = start_step, start_layer, 2 * blocks
        self.step = self.call = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in
                   ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        heads = attn.heads
        if not is_cross and self.step >= self.start_step and self.call // 2 >= self.start_layer:
            halves = []
            for qh, kh, vh in zip(q.chunk(2), k.chunk(2), v.chunk(2)):
                k_src, v_src = kh[:heads].repeat(qh.shape[0] // heads, 1, 1), vh[:heads].repeat(qh.shape[0] // heads, 1, 1)
                halves.append((qh @ k_src.transpose(1, 2) * attn.scale).softmax(-1) @ v_src)
            out = torch.cat(halves)
        else:
            out = (q @ k.transpose(1, 2) * attn.scale).softmax(-1) @ v
        self.call += 1
        if self.call == self.calls_per_step:
            self.call, self.step = 0, self.step + 1
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))


@pytest.mark.slow
def test_sdxl_synthesis_equals_the_published_sdxl_script(tiny_family_pipe):
    """run_synthesis_sdxl.py: the SDXL pipeline on [source, target] from a shared start code under
    CFG (no negative prompt), DDIM, MutualSelfAttentionControl(S, L, model_type="SDXL")."""
    from diffusers import StableDiffusionXLPipeline

    pipe = tiny_family_pipe("sdxl")
    steps, start_step, start_layer, guidance, seed = 4, 1, 44, 7.5, 3
    prompts = ["a portrait of an old man", "a portrait of an old man waving"]
    reference = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    reference.set_progress_bar_config(disable=True)
    start_code = torch.randn((1, 4, 8, 12), generator=torch.Generator("cpu").manual_seed(seed))
    pipe.unet.set_attn_processor(PublishedAttention(start_step, start_layer, 70))
    try:
        want = reference(prompts, latents=start_code.expand(2, -1, -1, -1), guidance_scale=guidance, height=64,
                         width=96, num_inference_steps=steps, output_type="latent").images
    finally:
        pipe.unet.set_attn_processor(AttnProcessor2_0())

    eng = engine(pipe, num_steps=steps, start_step=start_step, start_layer=start_layer, guidance_scale=guidance)
    source = eng.synthesize(prompts[0], seed=seed, height=64, width=96)
    torch.testing.assert_close(source.trajectory[-1:], start_code)
    torch.testing.assert_close(source.trajectory[0], want[0], atol=1e-4, rtol=1e-4)
    got = eng.render(source, prompts[0], [prompts[1]], output_type="latent")
    torch.testing.assert_close(got[0], want[1], atol=1e-4, rtol=1e-4)
    # The control acted: the target without it is another image.
    plain = engine(pipe, num_steps=steps, start_step=steps - 1, start_layer=69, guidance_scale=guidance)
    assert (plain.render(source, prompts[0], [prompts[1]], output_type="latent")[0] - want[1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------ SD 2.x, guidance off, Turbo


def test_sd2_v_prediction_source_correction_ends_on_the_encoded_source(tiny_family_pipe):
    pipe = tiny_family_pipe("sd2")
    eng = engine(pipe, num_steps=5, start_step=2)
    assert eng.ddim.prediction_type == "v_prediction" and eng.num_blocks == 16
    image = _image()
    inv = eng.invert(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        encoded = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    branch = eng.source_branch(inv, "a photo of a cat")
    assert torch.equal(branch.latents[-1], encoded[0])
    frames = eng.render(inv, "a photo of a cat", ["a cat standing"], output_type="latent")
    assert frames.isfinite().all() and (frames[0] - encoded[0]).abs().max() > 1e-3


def _plain_frame(eng, z, prompt):
    """The frame without MasaCtrl: conditional UNet samples only, plain attention."""
    cond = eng._embed(prompt)
    with torch.no_grad():
        for i in range(eng.config.num_steps):
            z = eng.ddim.denoise(eng._unet("generation", z, i, cond), i, z)
    return z


@pytest.mark.parametrize("family, guidance", [("sd15", 1.0), ("sdxl", 0.0)])
def test_guidance_off_is_one_sample_per_frame_and_step_and_masactrl_still_acts(tiny_family_pipe, family, guidance):
    pipe = tiny_family_pipe(family)
    eng = engine(pipe, num_steps=4, start_step=0, guidance_scale=guidance)
    inv = eng.invert(_image())
    frames = eng.render(inv, "a photo of a cat", ["a cat jumping", "a dog running", "a cat sitting"],
                        batch_size=2, output_type="latent")
    stats = eng.stats
    assert stats.frame_samples == 3 * 4 and stats.frame_calls == 2 * 4
    assert stats.source_samples == stats.source_calls == 4  # one source sample per step, no CFG pair
    plain = _plain_frame(eng, inv.trajectory[-1:], "a cat jumping")
    assert (frames[0] - plain[0]).abs().max() > 1e-3
    # Guidance 1 under CFG computes the same as no guidance: uncond + 1 * (cond - uncond) = cond.
    if guidance == 1.0:
        assert not eng.guided


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_renders_end_to_end_in_few_steps_from_step_zero(tiny_family_checkpoint, steps):
    path = tiny_family_checkpoint("sdxl-turbo")
    pipe = load_pipeline(path, controlnet=path / "controlnet", device="cpu")
    eng = engine(pipe, num_steps=steps, start_step=0, guidance_scale=0.0)
    assert eng.ddim.timesteps[0] == 999  # trailing spacing from the checkpoint's scheduler config
    inv = eng.invert(_image())
    out = eng.render(inv, "a photo of a cat", ["a cat jumping", "a cat sitting"], output_type="np")
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()
    assert eng.stats.frame_samples == 2 * steps


# ------------------------------------------------------------------------------ LoRA


@pytest.fixture(scope="module")
def sdxl_lora(tiny_family_checkpoint, tmp_path_factory):
    return make_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny_sdxl_lora.safetensors",
                          tiny_family_checkpoint("sdxl"), seed=0)


def test_lora_scale_zero_is_no_lora_and_a_lora_changes_the_frames(tiny_family_checkpoint, tiny_family_pipe, sdxl_lora):
    path = tiny_family_checkpoint("sdxl")
    base = tiny_family_pipe("sdxl")
    zero = load_pipeline(path, device="cpu", loras=[(sdxl_lora, 0.0)])
    full = load_pipeline(path, device="cpu", loras=[(sdxl_lora, 1.0)])
    zero_weights = zero.unet.state_dict()
    for name, weight in base.unet.state_dict().items():
        assert torch.equal(weight, zero_weights[name]), name
    assert not any("lora" in name for name in full.unet.state_dict())  # fused, adapters dropped
    image = _image()

    def frame(pipe):
        eng = engine(pipe, num_steps=2, start_step=0)
        return eng.render(eng.invert(image), "a photo of a cat", ["a cat jumping"], output_type="latent")

    assert (frame(full) - frame(base)).abs().max() > 1e-3


def test_lora_for_another_family_is_refused_before_loading(tiny_family_checkpoint, sdxl_lora, tmp_path):
    with pytest.raises(EngineInputError, match=r"loras\[0\]: this LoRA does not fit the sd15 checkpoint"):
        load_pipeline(tiny_family_checkpoint("sd15"), device="cpu", loras=[(sdxl_lora, 1.0)])
    sd15_lora = make_tiny_lora(tmp_path / "sd15.safetensors", tiny_family_checkpoint("sd15"))
    with pytest.raises(EngineInputError, match=r"does not fit the sd2 checkpoint .*width 32, the module has 48"):
        check_loras(tiny_family_checkpoint("sd2"), [(sd15_lora, 1.0)])
    assert check_loras(tiny_family_checkpoint("sd15"), [(sd15_lora, 0.5)]) == "sd15"
    with pytest.raises(EngineInputError, match=r"loras\[0\]\.scale: 'x' is not a number"):
        check_loras(tiny_family_checkpoint("sd15"), [(sd15_lora, "x")])
    with pytest.raises(EngineInputError, match=r"loras\[0\]: .* does not exist"):
        check_loras(tiny_family_checkpoint("sd15"), [(tmp_path / "missing.safetensors", 1.0)])


def test_lora_digest_follows_the_file_bytes(tiny_family_checkpoint, tmp_path):
    first = make_tiny_lora(tmp_path / "a.safetensors", tiny_family_checkpoint("sd15"), seed=0)
    same = make_tiny_lora(tmp_path / "b.safetensors", tiny_family_checkpoint("sd15"), seed=0)
    other = make_tiny_lora(tmp_path / "c.safetensors", tiny_family_checkpoint("sd15"), seed=1)
    assert lora_digest(first) == lora_digest(same)
    assert lora_digest(other) != lora_digest(first)
    assert len(lora_digest(first)) == 64


def test_sdxl_controlnet_takes_the_added_conditions_and_moves_the_frame(tiny_family_pipe):
    pipe = tiny_family_pipe("sdxl")
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    eng = engine(pipe, num_steps=2, start_step=0)
    inv = eng.invert(_image())
    pose = np.zeros((64, 64, 3), np.uint8)
    pose[20:44, 28:36] = 200
    from masactrl_engine import FrameSpec

    posed, plain = eng.render(inv, "a photo of a cat", [FrameSpec("a cat", pose=pose), FrameSpec("a cat")],
                              output_type="latent")
    assert eng.stats.controlnet_calls == 2 and eng.stats.controlnet_samples == 2 * 2 * 2
    assert posed.isfinite().all() and (posed - plain).abs().max() > 1e-3
