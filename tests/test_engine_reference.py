"""Faithfulness: a slow, plainly written copy of the published MasaCtrl procedure agrees with the
engine (no mask, no ControlNet), with source correction on and off.

The reference does what the published code does: invert with plain attention, then per frame
denoise the batch [source, frame] under CFG (rows: uncond source, uncond frame, cond source, cond
frame), counting attention calls to find the block index, with an explicit softmax where the
frame's queries meet the source's keys and values.
"""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from masactrl_engine import ControlConfig, SequenceEngine

STEPS, START_STEP, START_LAYER, GUIDANCE = 8, 2, 10, 7.5


class PublishedAttention:
    """Counts calls like the published AttentionBase: two per transformer block (self, cross)."""

    def __init__(self, start_step, start_layer, calls_per_step=32):
        self.start_step, self.start_layer, self.calls_per_step = start_step, start_layer, calls_per_step
        self.step = self.call = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (rows*heads, n, d)
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        heads = attn.heads
        block = self.call // 2
        if not is_cross and self.step >= self.start_step and block >= self.start_layer:
            halves = []
            for qh, kh, vh in zip(q.chunk(2), k.chunk(2), v.chunk(2)):
                rows = qh.shape[0] // heads
                # every row of the half (source and frame) attends to the half's source row
                k_src, v_src = kh[:heads], vh[:heads]
                q_heads = qh.view(rows, heads, *qh.shape[1:]).transpose(0, 1)  # (heads, rows, n, d)
                sim = torch.einsum("hrnd,hmd->hrnm", q_heads, k_src) * attn.scale
                out = torch.einsum("hrnm,hmd->hrnd", sim.softmax(-1), v_src)
                halves.append(out.transpose(0, 1).reshape(rows * heads, *out.shape[2:]))
            out = torch.cat(halves)
        else:
            out = (q @ k.transpose(1, 2) * attn.scale).softmax(-1) @ v
        self.call += 1
        if self.call == self.calls_per_step:
            self.call, self.step = 0, self.step + 1
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))


def _alphas(pipe):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    return scheduler, scheduler.alphas_cumprod, float(scheduler.final_alpha_cumprod)


def _embed(pipe, prompt):
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


@torch.no_grad()
def published_frames(pipe, image, source_prompt, frame_prompts, correction):
    scheduler, alphas, final = _alphas(pipe)
    ratio = scheduler.config.num_train_timesteps // STEPS
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    # --- inversion (plain attention, guidance 1, empty prompt)
    empty = _embed(pipe, "")
    trajectory = [latents]
    for t in reversed(scheduler.timesteps.tolist()):
        eps = pipe.unet(latents, t, encoder_hidden_states=empty).sample
        a_in = alphas[t - ratio] if t - ratio >= 0 else final
        a_out = alphas[t]
        x0 = (latents - (1 - a_in) ** 0.5 * eps) / a_in**0.5
        latents = a_out**0.5 * x0 + (1 - a_out) ** 0.5 * eps
        trajectory.append(latents)
    z_T = latents
    # --- sampling, one [source, frame] pair per frame
    frames = []
    for prompt in frame_prompts:
        processor = PublishedAttention(START_STEP, START_LAYER)
        pipe.unet.set_attn_processor(processor)
        text = torch.cat([empty, empty, _embed(pipe, source_prompt), _embed(pipe, prompt)])
        z = torch.cat([z_T, z_T])
        try:
            for i, t in enumerate(scheduler.timesteps.tolist()):
                if correction:
                    z = torch.cat([trajectory[-1 - i], z[1:]])
                eps = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=text).sample
                uncond, cond = eps.chunk(2)
                eps = uncond + GUIDANCE * (cond - uncond)
                a_t = alphas[t]
                a_prev = alphas[t - ratio] if t - ratio >= 0 else final
                x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
                z = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        finally:
            pipe.unet.set_attn_processor(AttnProcessor2_0())
        frames.append(z[1])
    return torch.stack(trajectory)[:, 0], torch.stack(frames)


@pytest.mark.slow
@pytest.mark.parametrize("correction", [True, False])
def test_engine_matches_published_algorithm(tiny_pipe, correction):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    prompts = ["a cat standing", "a cat jumping", "a dog sitting"]
    want_trajectory, want = published_frames(tiny_pipe, image, "a photo of a cat", prompts, correction)

    engine = SequenceEngine(tiny_pipe, ControlConfig(num_steps=STEPS, guidance_scale=GUIDANCE, start_step=START_STEP,
                                                      start_layer=START_LAYER, source_correction=correction), progress=False)
    inv = engine.invert(image, "")
    torch.testing.assert_close(inv.trajectory, want_trajectory, atol=1e-5, rtol=1e-4)
    got = engine.render(inv, "a photo of a cat", prompts, batch_size=2, output_type="latent")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The control changed something: without it the frames differ.
    plain = SequenceEngine(tiny_pipe, ControlConfig(num_steps=STEPS, guidance_scale=GUIDANCE, start_step=STEPS - 1,
                                                    start_layer=15, source_correction=correction), progress=False)
    assert (plain.render(inv, "a photo of a cat", prompts, output_type="latent") - want).abs().max() > 1e-3
