"""The published MasaCtrl schedule, written plainly: what the reference pipeline spends per frame.

Per frame, exactly as the published code (``MasaCtrlPipeline.invert`` then ``__call__`` with
``ref_intermediate_latents``, ``MutualSelfAttentionControl``) does it:

1. encode the source with the VAE (posterior mean) and DDIM-invert it for ``T`` steps with the
   empty prompt. The published code inverts at guidance 7.5, i.e. a CFG pair per step
   (``inversion="cfg"``: ``T`` UNet calls of 2 samples, 2 text-encoder calls); with the empty prompt
   on both halves CFG is a no-op, so ``inversion="single"`` (guidance 1: ``T`` calls of 1 sample,
   1 text-encoder call) computes the same trajectory at half the cost. Both are counted exactly.
2. denoise the batch ``[source, frame]`` under CFG for ``T`` steps: one UNet call of 4 samples
   per step (rows: uncond source, uncond frame, cond source, cond frame), 2 text-encoder calls
   (the two prompts, the two empty prompts). With source correction ("intermediate latents") the
   source row is replaced by the inversion latent of the same step before every call.
3. mutual self-attention: an attention processor that counts its calls like the published
   ``AttentionBase`` (two per transformer block per UNet call, so block = call // 2); at steps
   ``>= S`` and blocks ``>= L`` every row of a CFG half attends to that half's source row's keys and
   values. It uses ``scaled_dot_product_attention``, not the published explicit ``softmax(QK^T)V``,
   so that the comparison with the engine measures the schedule, not the attention kernel.

The VAE decode of the frame is left out, as it is on the engine's side (``output_type="latent"``):
it is the same one decode per frame in both schedules.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

INVERSION_MODES = ("cfg", "single")


class PublishedAttention:
    """Counts attention calls like the published ``AttentionBase``; SDPA inside."""

    def __init__(self, start_step: int, start_layer: int, num_att_layers: int):
        self.start_step, self.start_layer, self.num_att_layers = start_step, start_layer, num_att_layers
        self.cur_step = self.cur_att_layer = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        rows, tokens, _ = hidden_states.shape
        heads = attn.heads

        def split(x):  # (rows, n, heads*d) -> (rows, heads, n, d)
            return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(context)), split(attn.to_v(context))
        block = self.cur_att_layer // 2
        if not is_cross and self.cur_step >= self.start_step and block >= self.start_layer:
            halves = []
            for qh, kh, vh in zip(q.chunk(2), k.chunk(2), v.chunk(2)):
                # every row of the half (source and frame) attends to the half's source row
                r = qh.shape[0]
                folded = qh.transpose(0, 1).reshape(1, heads, r * tokens, -1)
                out = F.scaled_dot_product_attention(folded, kh[:1], vh[:1], scale=attn.scale)
                halves.append(out.view(heads, r, tokens, -1).transpose(0, 1))
            out = torch.cat(halves)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        self.cur_att_layer += 1
        if self.cur_att_layer == self.num_att_layers:
            self.cur_att_layer, self.cur_step = 0, self.cur_step + 1
        out = out.transpose(1, 2).reshape(rows, tokens, -1)
        return attn.to_out[1](attn.to_out[0](out))


def image_pixels(image) -> torch.Tensor:
    """A PIL image / HxWx3 uint8 array as the published ``load_image`` makes it: (1, 3, H, W) in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)[..., :3]
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1)[None]


class PublishedSchedule:
    def __init__(self, pipe, num_steps: int, guidance_scale: float = 7.5, start_step: int = 4,
                 start_layer: int = 10, source_correction: bool = True, inversion: str = "cfg"):
        from diffusers import DDIMScheduler

        if inversion not in INVERSION_MODES:
            raise ValueError(f"inversion: {inversion!r} is not one of {INVERSION_MODES}")
        self.pipe, self.unet = pipe, pipe.unet
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.start_step, self.start_layer = start_step, start_layer
        self.source_correction, self.inversion = source_correction, inversion
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        self.timesteps = scheduler.timesteps.tolist()
        self.alphas = scheduler.alphas_cumprod.double()
        self.final_alpha = float(scheduler.final_alpha_cumprod)
        self.ratio = scheduler.config.num_train_timesteps // num_steps
        # Hooks for the benchmark: name -> context manager (counting / timing the phase).
        self.phase = self.timer_phase = lambda name: nullcontext()

    # the published code: one text-encoder call per list of prompts
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.pipe.tokenizer(prompts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.pipe.text_encoder(ids)[0].to(self.dtype)

    def _alpha(self, t: int) -> float:
        return float(self.alphas[t]) if t >= 0 else self.final_alpha

    @staticmethod
    def _move(x, eps, a_from: float, a_to: float):
        x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
        return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps

    @torch.no_grad()
    def invert(self, image) -> list[torch.Tensor]:
        """``[z_0, ..., z_T]`` (``MasaCtrlPipeline.invert`` with ``return_intermediates=True``)."""
        vae = self.pipe.vae
        pixels = image_pixels(image).to(self.device, vae.dtype)
        z = (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).to(self.dtype)
        text = self.encode_text([""])
        guided = self.inversion == "cfg"
        if guided:
            text = torch.cat([self.encode_text([""]), text])
        trajectory = [z]
        for t in reversed(self.timesteps):
            eps = self.unet(torch.cat([z, z]) if guided else z, t, encoder_hidden_states=text).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + self.guidance_scale * (cond - uncond)
            z = self._move(z, eps, self._alpha(t - self.ratio), self._alpha(t))
            trajectory.append(z)
        return trajectory

    @torch.no_grad()
    def sample(self, trajectory: list[torch.Tensor], source_prompt: str, frame_prompt: str) -> torch.Tensor:
        """The ``[source, frame]`` pair under CFG with mutual self-attention; the frame's latent."""
        return self._pair(trajectory[-1], source_prompt, frame_prompt, trajectory)[1]

    @torch.no_grad()
    def synthesis(self, start_code: torch.Tensor, source_prompt: str, frame_prompt: str):
        """MasaCtrl's synthesis, as ``MasaCtrlPipeline.__call__`` runs it with a shared start code
        (``run_synthesis*.py``): no image, no inversion; the batch ``[source, frame]`` starts from
        the same noise ``start_code`` (1, C, h, w) and is denoised under CFG with mutual
        self-attention, the source row being an ordinary generation (it attends to itself).
        Returns the final (source latent, frame latent)."""
        z = self._pair(start_code, source_prompt, frame_prompt)
        return z[0], z[1]

    def _pair(self, z_T: torch.Tensor, source_prompt: str, frame_prompt: str, trajectory=None) -> torch.Tensor:
        """Denoise the batch ``[source, frame]`` from ``z_T`` under CFG with mutual self-attention.
        With source correction and an inversion ``trajectory``, the source row is replaced by the
        inversion latent of each step before the UNet sees it."""
        text = self.encode_text([source_prompt, frame_prompt])
        text = torch.cat([self.encode_text(["", ""]), text])
        z = torch.cat([z_T, z_T])
        original = self.unet.attn_processors
        self.unet.set_attn_processor(PublishedAttention(self.start_step, self.start_layer, len(original)))
        try:
            for i, t in enumerate(self.timesteps):
                if self.source_correction and trajectory is not None:
                    z = torch.cat([trajectory[-1 - i], z[1:]])
                eps = self.unet(torch.cat([z, z]), t, encoder_hidden_states=text).sample
                uncond, cond = eps.chunk(2)
                eps = uncond + self.guidance_scale * (cond - uncond)
                z = self._move(z, eps, self._alpha(t), self._alpha(t - self.ratio))
        finally:
            self.unet.set_attn_processor(original)
        return z

    def frame(self, image, source_prompt: str, frame_prompt: str) -> torch.Tensor:
        """One frame of the published schedule: invert the source, then sample the pair."""
        original = self.unet.attn_processors
        self.unet.set_attn_processor(AttnProcessor2_0())  # inversion runs with plain attention
        try:
            with self.phase("inversion"), self.timer_phase("inversion"):
                trajectory = self.invert(image)
        finally:
            self.unet.set_attn_processor(original)
        with self.phase("sampling"), self.timer_phase("sampling"):
            return self.sample(trajectory, source_prompt, frame_prompt)

    # exact costs, per frame
    def inversion_samples_per_frame(self) -> int:
        return self.num_steps * (2 if self.inversion == "cfg" else 1)

    def samples_per_frame(self) -> int:
        return self.inversion_samples_per_frame() + 4 * self.num_steps

    def calls_per_frame(self) -> int:
        return 2 * self.num_steps

    def text_calls_per_frame(self) -> int:
        return (2 if self.inversion == "cfg" else 1) + 2
