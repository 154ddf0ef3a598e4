"""``SequenceEngine``: invert a source once, then render any number of consistent frames.

Reading order of ``render``: validate everything -> get the (cached) source branch -> for each
batch of frames, denoise from the shared ``z_T`` with mutual self-attention over the source
branch's keys/values -> decode.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .attention import (
    CallContext,
    MutualSelfAttention,
    PlainAttention,
    RecordCrossAttentionMaps,
    RecordKeysValues,
    attention_layers,
    installed,
)
from .config import ControlConfig, FrameSpec
from .ddim import DDIM
from .errors import EngineInputError
from .images import conditioning_pixels, mask_pixels, source_pixels, to_output
from .inversion import InvertedSource
from .masks import MASK_LEVEL, MaskGuide, level_shapes, subject_positions

log = logging.getLogger("masactrl_engine")

OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class EngineStats:
    """UNet calls and the samples (batch rows) they carried, by purpose. Accumulates."""

    inversion_calls: int = 0
    inversion_samples: int = 0
    source_calls: int = 0
    source_samples: int = 0
    frame_calls: int = 0
    frame_samples: int = 0
    generation_calls: int = 0
    generation_samples: int = 0
    controlnet_calls: int = 0
    controlnet_samples: int = 0

    def count(self, purpose: str, samples: int) -> None:
        setattr(self, f"{purpose}_calls", getattr(self, f"{purpose}_calls") + 1)
        setattr(self, f"{purpose}_samples", getattr(self, f"{purpose}_samples") + samples)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class SourceBranch:
    """What frames need from the source, per controlled step: self-attention keys/values of the
    controlled blocks and (for automatic masks) mask-level cross-attention maps.

    ``latents[i]`` is the source latent after denoising step ``i``; with source correction the
    branch follows the inversion trajectory by definition, so it ends on the encoded source.
    """

    key: tuple
    kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
    maps: dict[int, list[tuple[int, torch.Tensor]]]
    latents: torch.Tensor
    tokens: list[int] | None = None


class SequenceEngine:
    def __init__(self, pipe, config: ControlConfig | None = None, progress: bool = True):
        self.config = config or ControlConfig()
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        self.controlnet = getattr(pipe, "controlnet", None)
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self.layers = attention_layers(self.unet)
        self.num_blocks = 1 + max(layer.block for layer in self.layers)
        if self.config.start_layer >= self.num_blocks:
            raise EngineInputError(
                f"start_layer: {self.config.start_layer} must be below the UNet's {self.num_blocks} "
                f"transformer blocks (0..{self.num_blocks - 1}); the published default is 10"
            )
        self.ddim = DDIM.from_config(pipe.scheduler.config, self.config.num_steps)
        # On the device once: a Python int timestep would be copied host-to-device at every call.
        self._timesteps = torch.tensor(self.ddim.timesteps, device=self.device)
        self._inversion_timesteps = self._timesteps.flip(0)  # ddim.inversion_timestep(k), on the device
        self.progress = progress
        self.stats = EngineStats()
        self._embeddings: dict[str, torch.Tensor] = {}
        self._source: SourceBranch | None = None

    # ---------------------------------------------------------------- building blocks

    def _embed(self, prompt: str) -> torch.Tensor:
        """Text embedding (1, 77, D), computed once per distinct prompt."""
        if prompt not in self._embeddings:
            ids = self.tokenizer(
                prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(self.device)
            with torch.no_grad():
                self._embeddings[prompt] = self.text_encoder(ids)[0].to(self.dtype)
        return self._embeddings[prompt]

    def _unet(self, purpose: str, x, step: int, embeddings, ctx=None, residuals=None) -> torch.Tensor:
        self.stats.count(purpose, x.shape[0])
        down, mid = residuals if residuals is not None else (None, None)
        return self.unet(
            x, self._timesteps[step], encoder_hidden_states=embeddings,
            cross_attention_kwargs={"masactrl": ctx} if ctx is not None else None,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample

    def _guided(self, purpose: str, z, step: int, embeddings, ctx=None, residuals=None) -> torch.Tensor:
        """One CFG pair per row of ``z``; ``embeddings`` is [unconditional rows | conditional rows]."""
        noise = self._unet(purpose, torch.cat([z, z]), step, embeddings, ctx, residuals)
        uncond, cond = noise.chunk(2)
        return uncond + self.config.guidance_scale * (cond - uncond)

    def _pair_embeddings(self, prompts: list[str]) -> torch.Tensor:
        negative = self._embed(self.config.negative_prompt)
        return torch.cat([negative.expand(len(prompts), -1, -1)] + [self._embed(p) for p in prompts])

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean times the VAE's own scaling factor."""
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return posterior.mean.to(self.dtype) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)

    # ---------------------------------------------------------------- inversion

    @torch.no_grad()
    def invert(self, image, prompt: str = "", height: int | None = None, width: int | None = None) -> InvertedSource:
        """DDIM inversion at guidance 1 (one UNet sample per step), keeping the whole trajectory."""
        pixels = source_pixels(image, height, width)
        z = self.encode(pixels)
        embedding = self._embed(prompt)
        trajectory = [z]
        with self._bar(self.ddim.num_steps, "DDIM inversion") as bar:
            for k in range(self.ddim.num_steps):
                self.stats.count("inversion", 1)
                noise = self.unet(z, self._inversion_timesteps[k], encoder_hidden_states=embedding).sample
                z = self.ddim.invert(noise, k, z)
                trajectory.append(z)
                bar.update()
        return InvertedSource(torch.cat(trajectory), prompt, pixels.shape[2], pixels.shape[3], self.ddim.timesteps)

    # ---------------------------------------------------------------- source branch

    def _mask_level_tokens(self, latent_shape) -> int:
        h, w = level_shapes(*latent_shape)[MASK_LEVEL]
        return h * w

    def _needs_source_maps(self) -> bool:
        mask = self.config.mask
        return mask is not None and mask.source_mask is None

    def _check_inversion(self, inv: InvertedSource) -> None:
        if not isinstance(inv, InvertedSource):
            raise EngineInputError(f"inv: expected an InvertedSource from engine.invert, got {type(inv).__name__}")
        if tuple(inv.timesteps) != self.ddim.timesteps:
            raise EngineInputError(
                f"inv: made for {inv.num_steps} steps ({inv.timesteps[:2]}...), the engine runs "
                f"num_steps={self.config.num_steps}; invert again with this engine"
            )

    @torch.no_grad()
    def source_branch(self, inv: InvertedSource, source_prompt: str) -> SourceBranch:
        """Run (or reuse) the source branch: one CFG pair per step where it is needed."""
        self._check_inversion(inv)
        cfg = self.config
        record_maps = self._needs_source_maps()
        tokens = subject_positions(self.tokenizer, source_prompt, cfg.mask.subject) if record_maps else None
        key = (inv.digest, source_prompt, cfg.num_steps, cfg.guidance_scale, cfg.start_step, cfg.start_layer,
               cfg.source_correction, cfg.negative_prompt, record_maps and cfg.mask.subject)
        if self._source is not None and self._source.key == key:
            return self._source
        self._source = None  # free the previous branch's keys/values before computing new ones

        trajectory = inv.trajectory.to(self.device, self.dtype)
        T, S = cfg.num_steps, cfg.start_step
        kv: dict = {}
        processors = {}
        tokens_at_mask_level = self._mask_level_tokens(trajectory.shape[2:])
        for layer in self.layers:
            if not layer.is_cross and layer.block >= cfg.start_layer:
                processors[layer.name] = RecordKeysValues(layer.block, kv)
            elif layer.is_cross and record_maps:
                processors[layer.name] = RecordCrossAttentionMaps(layer.block, tokens_at_mask_level)
            else:
                processors[layer.name] = PlainAttention()
        embeddings = self._pair_embeddings([source_prompt])
        maps: dict[int, list] = {}
        # With correction the source latent of step i is the inversion latent of that noise level,
        # so steps before S (which record nothing) need no UNet call at all.
        steps = range(S, T) if cfg.source_correction else range(T)
        z = trajectory[-1:]
        latents = []
        with installed(self.unet, processors), self._bar(len(steps), "source branch") as bar:
            for i in steps:
                if cfg.source_correction:
                    z = trajectory[T - i][None]
                ctx = CallContext(step=i) if i >= S else None
                z = self.ddim.denoise(self._guided("source", z, i, embeddings, ctx), i, z)
                latents.append(z)
                if ctx is not None and record_maps:
                    maps[i] = ctx.maps
                bar.update()
        if cfg.source_correction:
            latents = trajectory.flip(0)[1:]
        else:
            latents = torch.cat(latents)
        self._source = SourceBranch(key, kv, maps, latents, tokens)
        return self._source

    # ---------------------------------------------------------------- frames

    def _prepare_frames(self, frames) -> list[FrameSpec]:
        if isinstance(frames, (str, FrameSpec)) or not hasattr(frames, "__len__"):
            raise EngineInputError("frames: pass a list of FrameSpec (or prompt strings)")
        if len(frames) == 0:
            raise EngineInputError("frames: the list is empty; give at least one FrameSpec")
        specs = [FrameSpec(f) if isinstance(f, str) else f for f in frames]
        for i, spec in enumerate(specs):
            if not isinstance(spec, FrameSpec):
                raise EngineInputError(f"frames[{i}]: expected a FrameSpec or a prompt string, got {type(spec).__name__}")
            if spec.pose is not None and self.controlnet is None:
                raise EngineInputError(
                    f"frames[{i}].pose: the pipeline has no ControlNet; load it with load_pipeline(..., controlnet=...)"
                )
        return specs

    @dataclass
    class _MaskPlan:
        source_explicit: torch.Tensor | None
        frame_tokens: list  # per frame: subject token positions, or None with an explicit mask
        frame_explicit: list  # per frame: (1, 1, H, W) mask tensor, or None

    def _plan_masks(self, specs, source_prompt: str) -> "_MaskPlan | None":
        """All subject lookups and mask conversions, before any UNet call."""
        mask = self.config.mask
        if mask is None:
            return None
        tokens, explicit = [], []
        for i, spec in enumerate(specs):
            if spec.mask is None and mask.subject is None:
                raise EngineInputError(
                    f"frames[{i}].mask: needed because mask.subject is not set; give every frame a mask "
                    "image or set MaskConfig(subject=...)"
                )
            tokens.append(None if spec.mask is not None else subject_positions(self.tokenizer, spec.prompt, mask.subject))
            explicit.append(None if spec.mask is None else mask_pixels(spec.mask, f"frames[{i}].mask").to(self.device))
        if mask.source_mask is None:
            subject_positions(self.tokenizer, source_prompt, mask.subject)
            source = None
        else:
            source = mask_pixels(mask.source_mask, "mask.source_mask").to(self.device)
        return self._MaskPlan(source, tokens, explicit)

    def _mask_guide(self, plan, indices, branch: SourceBranch, shapes) -> MaskGuide | None:
        if plan is None:
            return None
        return MaskGuide(
            threshold=self.config.mask.threshold,
            shapes=shapes,
            frame_indices=indices,
            frame_tokens=[plan.frame_tokens[i] for i in indices],
            frame_explicit=[plan.frame_explicit[i] for i in indices],
            source_tokens=branch.tokens,
            source_maps=branch.maps,
            source_explicit=plan.source_explicit,
        )

    def _controlnet_residuals(self, x, step, embeddings, poses, weights):
        cfg = self.config
        fraction_start, fraction_end = step / cfg.num_steps, (step + 1) / cfg.num_steps
        if poses is None or fraction_start < cfg.controlnet_start or fraction_end > cfg.controlnet_end:
            return None
        self.stats.count("controlnet", x.shape[0])
        down, mid = self.controlnet(
            x, self._timesteps[step], encoder_hidden_states=embeddings,
            controlnet_cond=poses, conditioning_scale=1.0, return_dict=False,
        )
        # Per-row weights: the scale for frames with a pose, 0 for frames without one.
        return [d * weights for d in down], mid * weights

    @torch.no_grad()
    def render(self, inv: InvertedSource, source_prompt: str, frames, batch_size: int = 4,
               output_type: str = "pil", callback=None):
        """Render ``frames`` (FrameSpec or prompt strings) from the inverted source.

        Returns PIL images, an (N, H, W, 3) float array in [0, 1] ("np") or latents ("latent"), in
        frame order. ``callback(step, frame_indices, latents)`` is called after every step.
        """
        cfg = self.config
        self._check_inversion(inv)
        if output_type not in OUTPUT_TYPES:
            raise EngineInputError(f"output_type: {output_type!r} is not one of {OUTPUT_TYPES}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EngineInputError(f"batch_size: {batch_size!r} must be a whole number >= 1")
        if not isinstance(source_prompt, str):
            raise EngineInputError(f"source_prompt: expected a string, got {type(source_prompt).__name__}")
        specs = self._prepare_frames(frames)
        mask_plan = self._plan_masks(specs, source_prompt)
        use_poses = self.controlnet is not None and cfg.controlnet_scale > 0 and any(s.pose is not None for s in specs)
        poses = [conditioning_pixels(s.pose, inv.height, inv.width, f"frames[{i}].pose") if s.pose is not None
                 else None for i, s in enumerate(specs)] if use_poses else None

        branch = self.source_branch(inv, source_prompt)
        z_T = inv.trajectory[-1:].to(self.device, self.dtype)
        shapes = level_shapes(*z_T.shape[2:])
        outputs = []
        batches = [list(range(i, min(i + batch_size, len(specs)))) for i in range(0, len(specs), batch_size)]
        with self._bar(len(batches) * cfg.num_steps, f"frames ({len(specs)})") as bar:
            for indices in batches:
                guide = self._mask_guide(mask_plan, indices, branch, shapes)
                batch_poses = None if poses is None else self._batch_poses(poses, indices)
                z = self._denoise_frames(z_T.expand(len(indices), -1, -1, -1), indices, specs, branch, guide,
                                         batch_poses, callback, bar)
                if guide is not None:
                    guide.report()
                outputs.append(z)
        latents = torch.cat(outputs)
        if output_type == "latent":
            return latents
        return to_output(torch.cat([self.decode(latents[i : i + batch_size])
                                    for i in range(0, len(latents), batch_size)]), output_type)

    def _batch_poses(self, poses, indices):
        if all(poses[i] is None for i in indices):
            return None  # no ControlNet work for a batch without poses
        blank = torch.zeros_like(next(p for p in poses if p is not None))
        images = torch.stack([poses[i] if poses[i] is not None else blank for i in indices])
        weights = torch.tensor([self.config.controlnet_scale if poses[i] is not None else 0.0 for i in indices])
        images = torch.cat([images, images]).to(self.device, self.dtype)
        weights = torch.cat([weights, weights]).to(self.device, self.dtype)[:, None, None, None]
        return images, weights

    def _denoise_frames(self, z, indices, specs, branch, guide, batch_poses, callback, bar):
        cfg = self.config
        # Frames with automatic masks need their own mask-level cross-attention maps.
        record_maps = guide is not None and any(tokens is not None for tokens in guide.frame_tokens)
        processors = {}
        tokens_at_mask_level = self._mask_level_tokens(z.shape[2:])
        for layer in self.layers:
            if not layer.is_cross and layer.block >= cfg.start_layer:
                processors[layer.name] = MutualSelfAttention(layer.block, branch.kv, guide)
            elif layer.is_cross and record_maps:
                processors[layer.name] = RecordCrossAttentionMaps(layer.block, tokens_at_mask_level)
            else:
                processors[layer.name] = PlainAttention()
        embeddings = self._pair_embeddings([specs[i].prompt for i in indices])
        with installed(self.unet, processors):
            for i in range(cfg.num_steps):
                ctx = CallContext(step=i) if i >= cfg.start_step else None
                residuals = None
                if batch_poses is not None:
                    residuals = self._controlnet_residuals(torch.cat([z, z]), i, embeddings, *batch_poses)
                z = self.ddim.denoise(self._guided("frame", z, i, embeddings, ctx, residuals), i, z)
                if callback is not None:
                    callback(i, indices, z)
                bar.update()
        return z

    # ---------------------------------------------------------------- synthesis mode

    @torch.no_grad()
    def generate(self, prompt: str, seed: int = 0, height: int = 512, width: int = 512):
        """A source image from a prompt (plain DDIM sampling, no control), as a PIL image."""
        from .images import check_size

        check_size(height, width)
        generator = torch.Generator("cpu").manual_seed(seed)
        channels = self.unet.config.in_channels
        z = torch.randn((1, channels, height // 8, width // 8), generator=generator).to(self.device, self.dtype)
        embeddings = self._pair_embeddings([prompt])
        with self._bar(self.config.num_steps, "generate source") as bar:
            for i in range(self.config.num_steps):
                z = self.ddim.denoise(self._guided("generation", z, i, embeddings), i, z)
                bar.update()
        return to_output(self.decode(z), "pil")[0]
