"""``SequenceEngine``: invert a source once, then render any number of consistent frames.

Reading order of ``render``: check inputs -> prepare each frame (start latent, pose, mask) -> get
the (cached) source branch -> get the (cached) anchor frame when frames attend to one -> denoise
the frames in batches with mutual self-attention over the cached keys/values -> decode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .attention import (
    CrossFrameAttention,
    MutualSelfAttention,
    PlainAttention,
    RecordAnchorKeysValues,
    RecordCrossAttentionMaps,
    RecordKeysValues,
    attention_layers,
    installed,
)
from .conditioning import DEFAULT_PROMPT_CACHE_SIZE, PromptEncoder, TextConditioning, parse_prompt
from .config import ControlConfig, FrameSpec
from .ddim import DDIM
from .families import mask_level
from .errors import EngineInputError
from .images import check_size, conditioning_pixels, mask_pixels, source_pixels, to_output
from .inversion import InvertedSource
from .masks import MASK_LEVEL, MaskGuide, level_shapes, subject_positions
from .mutual import CFG_HALVES, CallContext

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
    anchor_calls: int = 0
    anchor_samples: int = 0

    def count(self, purpose: str, samples: int) -> None:
        setattr(self, f"{purpose}_calls", getattr(self, f"{purpose}_calls") + 1)
        setattr(self, f"{purpose}_samples", getattr(self, f"{purpose}_samples") + samples)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SourceBranches:
    """Source branches by what they depend on (``SourceBranch.key``), most recent last.

    An engine makes its own, holding one branch. Engines of one pipeline that differ only in what
    frames do (anchor weight, ControlNet scale, cross-frame mode, frame start) compute the same
    branch: given one shared instance, they compute it once. Thread-safe; a branch being computed
    by two engines at once is computed twice, never half-read.
    """

    def __init__(self, size: int = 1):
        self.size = size
        self._branches: OrderedDict[tuple, SourceBranch] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> "SourceBranch | None":
        with self._lock:
            branch = self._branches.get(key)
            if branch is not None:
                self._branches.move_to_end(key)
            return branch

    def make_room(self) -> None:
        """Drop the oldest branches so that one more fits (before computing it: its keys/values
        are the largest tensors an engine keeps)."""
        with self._lock:
            while len(self._branches) >= self.size:
                self._branches.popitem(last=False)

    def put(self, branch: "SourceBranch") -> None:
        with self._lock:
            self._branches[branch.key] = branch
            self._branches.move_to_end(branch.key)
            while len(self._branches) > self.size:
                self._branches.popitem(last=False)

    def __len__(self) -> int:
        return len(self._branches)


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


@dataclass
class AnchorBranch:
    """What frames need from the anchor frame (``cross_frame="anchor"``): its self-attention
    keys/values of the controlled blocks and steps, its subject masks there (mask guidance only)
    and its own final latent (1, C, h, w), which is its ``cross_frame="none"`` frame.

    ``key`` digests the inversion, the settings and the anchor's spec (pose and mask pixels
    included); ``spec_digest`` identifies the anchor among a render's frames.
    """

    key: str
    spec_digest: str
    kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]
    masks: dict[tuple[int, int], torch.Tensor | None]
    latents: torch.Tensor


@dataclass
class _PreparedFrames:
    """Everything a render needs per frame, converted and checked before any UNet call."""

    specs: list[FrameSpec]
    starts: list[torch.Tensor]  # (1, C, h, w) start latent per frame (on the device)
    poses: list[torch.Tensor | None]  # (3, H, W) pose pixels, None without a pose or at scale 0
    scales: list[float]  # ControlNet scale per frame (0 without a pose)
    digests: list[str]  # content of each frame's request, for the anchor's identity
    masks: "SequenceEngine._MaskPlan | None"


def _initial_noise(seed: int, shape) -> torch.Tensor:
    """Start noise drawn on the CPU, so that a seed gives the same latents on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def _digest(*parts) -> str:
    """sha256 of JSON-able values and tensors (by their float32 bytes)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().float().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part).encode())
        h.update(b"|")
    return h.hexdigest()[:32]


class SequenceEngine:
    def __init__(self, pipe, config: ControlConfig | None = None, progress: bool = True,
                 prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE, source_branches: SourceBranches | None = None):
        self.config = config or ControlConfig()
        self.unet, self.vae = pipe.unet, pipe.vae
        # SDXL's VAE overflows in fp16: its config asks for fp32 (diffusers upcasts it the same way).
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
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
        if self.config.mask is not None:
            mask_level(self.unet.config, self.vae_scale_factor)  # refuses a UNet without the 1/32 level
        # Guidance <= 1 is no guidance (as in diffusers): one UNet sample per row and step.
        self.guided = self.config.guidance_scale > 1
        self.ddim = DDIM.from_config(pipe.scheduler.config, self.config.num_steps)
        # On the device once: a Python int timestep would be copied host-to-device at every call.
        self._timesteps = torch.tensor(self.ddim.timesteps, device=self.device)
        self._inversion_timesteps = self._timesteps.flip(0)  # ddim.inversion_timestep(k), on the device
        self.progress = progress
        self.stats = EngineStats()
        self.text = PromptEncoder(pipe, self.device, self.dtype, prompt_cache_size)
        # Shared with other engines of the same pipeline when the caller passes one (worker_cache).
        self.source_branches = source_branches if source_branches is not None else SourceBranches()
        self._anchor: AnchorBranch | None = None

    # ---------------------------------------------------------------- building blocks

    def _embed(self, prompt: str) -> TextConditioning:
        """One prompt's conditioning (one row), from the bounded prompt cache."""
        return self.text.embed(prompt)

    def _added_cond(self, embeddings: TextConditioning, x: torch.Tensor) -> dict | None:
        """SDXL's pooled text embeddings and size/crop time ids for latents ``x``; None for SD."""
        return self.text.added_cond_kwargs(embeddings, x.shape[-2] * self.vae_scale_factor,
                                           x.shape[-1] * self.vae_scale_factor)

    def _unet(self, purpose: str, x, step: int, embeddings: TextConditioning, ctx=None, residuals=None,
              timestep=None) -> torch.Tensor:
        self.stats.count(purpose, x.shape[0])
        down, mid = residuals if residuals is not None else (None, None)
        return self.unet(
            x, self._timesteps[step] if timestep is None else timestep, encoder_hidden_states=embeddings.hidden,
            added_cond_kwargs=self._added_cond(embeddings, x),
            cross_attention_kwargs={"masactrl": ctx} if ctx is not None else None,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample

    def _guided(self, purpose: str, z, step: int, embeddings, ctx=None, control=None) -> torch.Tensor:
        """One CFG pair per row of ``z`` (one sample without guidance); ``embeddings`` comes from
        ``_pair_embeddings`` ([unconditional rows | conditional rows] under CFG).

        The one place that lays out the CFG batch: it tells the attention processors how many
        halves the batch holds (``ctx.halves``) and doubles ``control`` (pose images and per-row
        ControlNet weights for the rows of ``z``) to match.
        """
        halves = CFG_HALVES if self.guided else 1  # without guidance: one sample per row
        x = torch.cat([z] * halves)
        if ctx is not None:
            ctx.halves = halves
        residuals = None
        if control is not None:
            poses, weights = control
            residuals = self._controlnet_residuals(x, step, embeddings, torch.cat([poses] * halves),
                                                   torch.cat([weights] * halves))
        noise = self._unet(purpose, x, step, embeddings, ctx, residuals)
        if not self.guided:
            return noise
        uncond, cond = noise.chunk(2)
        return uncond + self.config.guidance_scale * (cond - uncond)

    def _pair_embeddings(self, prompts: list) -> TextConditioning:
        """Conditioning of a batch: [negative rows | prompt rows] under CFG, prompt rows without;
        ``prompts`` holds prompt strings or ``TextConditioning`` rows."""
        return self.text.rows(prompts, self.config.negative_prompt, self.guided)

    def _frame_conditioning(self, spec: FrameSpec) -> TextConditioning:
        """A frame's own conditioning row: its prompt's, or interpolated along a prompt travel."""
        return self.text.travel(spec.prompt, spec.prompt_to, spec.travel, spec.interpolation)

    def _subject_positions(self, prompt: str) -> list[int]:
        """Where ``mask.subject``'s words sit among ``prompt``'s conditioning tokens."""
        return subject_positions(self.tokenizer, prompt, self.config.mask.subject, self.text.token_ids(prompt))

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
                noise = self._unet("inversion", z, k, embedding, timestep=self._inversion_timesteps[k])
                z = self.ddim.invert(noise, k, z)
                trajectory.append(z)
                bar.update()
        return InvertedSource(torch.cat(trajectory), prompt, pixels.shape[2], pixels.shape[3], self.ddim.timesteps)

    # ---------------------------------------------------------------- source branch

    def _mask_level_tokens(self, latent_shape) -> int:
        h, w = level_shapes(*latent_shape)[MASK_LEVEL]
        return h * w

    def _processors(self, controlled, record_maps: bool, latent_shape) -> dict:
        """The attention processors of one pass: ``controlled(block)`` on the self-attention of
        the controlled blocks, mask-level map recorders on cross-attention when ``record_maps``,
        plain attention everywhere else."""
        tokens_at_mask_level = self._mask_level_tokens(latent_shape)
        processors = {}
        for layer in self.layers:
            if not layer.is_cross and layer.block >= self.config.start_layer:
                processors[layer.name] = controlled(layer.block)
            elif layer.is_cross and record_maps:
                processors[layer.name] = RecordCrossAttentionMaps(layer.block, tokens_at_mask_level)
            else:
                processors[layer.name] = PlainAttention()
        return processors

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
        tokens = self._subject_positions(source_prompt) if record_maps else None
        key = (inv.digest, source_prompt, cfg.num_steps, cfg.guidance_scale, cfg.start_step, cfg.start_layer,
               cfg.source_correction, cfg.negative_prompt, record_maps and cfg.mask.subject)
        cached = self.source_branches.get(key)
        if cached is not None:
            return cached
        self.source_branches.make_room()  # free the previous branch's keys/values before computing new ones

        trajectory = inv.trajectory.to(self.device, self.dtype)
        T, S = cfg.num_steps, cfg.start_step
        kv: dict = {}
        processors = self._processors(lambda block: RecordKeysValues(block, kv), record_maps, trajectory.shape[2:])
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
        branch = SourceBranch(key, kv, maps, latents, tokens)
        self.source_branches.put(branch)
        return branch


    # ---------------------------------------------------------------- frames: preparation

    def _frame_specs(self, frames, label) -> list[FrameSpec]:
        if isinstance(frames, (str, FrameSpec)) or not hasattr(frames, "__len__"):
            raise EngineInputError("frames: pass a list of FrameSpec (or prompt strings)")
        if len(frames) == 0:
            raise EngineInputError("frames: the list is empty; give at least one FrameSpec")
        specs = [FrameSpec(f) if isinstance(f, str) else f for f in frames]
        for i, spec in enumerate(specs):
            if not isinstance(spec, FrameSpec):
                raise EngineInputError(f"{label(i)}: expected a FrameSpec or a prompt string, got {type(spec).__name__}")
            if spec.pose is not None and self.controlnet is None:
                raise EngineInputError(
                    f"{label(i)}.pose: the pipeline has no ControlNet; load it with load_pipeline(..., controlnet=...)"
                )
            for name in ("prompt", "prompt_to"):  # weighting syntax the engine refuses, before any work
                text = getattr(spec, name)
                if text is not None:
                    try:
                        parse_prompt(text)
                    except EngineInputError as exc:
                        raise EngineInputError(f"{label(i)}.{name}: {str(exc).removeprefix('prompt: ')}") from None
            if spec.seed is not None and self.config.frame_start != "noise":
                raise EngineInputError(
                    f"{label(i)}.seed: a frame's own seed only applies with frame_start='noise' "
                    f"(this engine has frame_start={self.config.frame_start!r}); set it or drop the seed"
                )
        return specs

    @dataclass
    class _MaskPlan:
        source_explicit: torch.Tensor | None
        frame_tokens: list  # per frame: subject token positions, or None with an explicit mask
        frame_explicit: list  # per frame: (1, 1, H, W) mask tensor, or None

    def _plan_masks(self, specs, source_prompt: str, label) -> "_MaskPlan | None":
        """All subject lookups and mask conversions, before any UNet call."""
        mask = self.config.mask
        if mask is None:
            return None
        tokens, explicit = [], []
        for i, spec in enumerate(specs):
            if spec.mask is None and mask.subject is None:
                raise EngineInputError(
                    f"{label(i)}.mask: needed because mask.subject is not set; give every frame a mask "
                    "image or set MaskConfig(subject=...)"
                )
            # A travelling frame reads the subject in the nearer keyframe's tokens.
            tokens.append(None if spec.mask is not None else self._subject_positions(spec.nearer_prompt))
            explicit.append(None if spec.mask is None else mask_pixels(spec.mask, f"{label(i)}.mask").to(self.device))
        if mask.source_mask is None:
            self._subject_positions(source_prompt)
            source = None
        else:
            source = mask_pixels(mask.source_mask, "mask.source_mask").to(self.device)
        return self._MaskPlan(source, tokens, explicit)

    def _start_latents(self, inv: InvertedSource, specs) -> list[torch.Tensor]:
        """Each frame's latent at step ``config.first_step``: the inverted ``z_T`` (or, renoising,
        the inversion latent of that level), or seeded noise."""
        cfg = self.config
        if cfg.frame_start == "noise":
            shape = (1, *inv.trajectory.shape[1:])
            shared = _initial_noise(cfg.seed, shape).to(self.device, self.dtype)
            return [shared if spec.seed is None else _initial_noise(spec.seed, shape).to(self.device, self.dtype)
                    for spec in specs]
        # Denoising step k works on the latent at timesteps[k]: inversion level T - k.
        level = cfg.num_steps - cfg.first_step
        start = inv.trajectory[level : level + 1].to(self.device, self.dtype)
        return [start] * len(specs)

    def _plan_frames(self, inv: InvertedSource, frames, source_prompt: str, label) -> _PreparedFrames:
        cfg = self.config
        specs = self._frame_specs(frames, label)
        masks = self._plan_masks(specs, source_prompt, label)
        poses, scales, digests = [], [], []
        for i, spec in enumerate(specs):
            scale = cfg.controlnet_scale if spec.controlnet_scale is None else float(spec.controlnet_scale)
            # A pose at scale 0 is no pose: no ControlNet work, the frame's residuals are exactly none.
            pose = None
            if spec.pose is not None and scale > 0:
                pose = conditioning_pixels(spec.pose, inv.height, inv.width, f"{label(i)}.pose")
            poses.append(pose)
            scales.append(scale if pose is not None else 0.0)
            explicit = None if masks is None else masks.frame_explicit[i]
            text = spec.prompt if spec.prompt_to is None else [spec.prompt, spec.prompt_to, spec.travel,
                                                                spec.interpolation]
            digests.append(_digest(text, spec.seed, scales[-1], pose, explicit))
        return _PreparedFrames(specs, self._start_latents(inv, specs), poses, scales, digests, masks)

    def _mask_guide(self, plan: _PreparedFrames, indices, shapes, tokens, maps) -> MaskGuide | None:
        masks = plan.masks
        if masks is None:
            return None
        return MaskGuide(
            threshold=self.config.mask.threshold,
            shapes=shapes,
            frame_indices=indices,
            frame_tokens=[masks.frame_tokens[i] for i in indices],
            frame_explicit=[masks.frame_explicit[i] for i in indices],
            source_tokens=tokens,
            source_maps=maps,
            source_explicit=masks.source_explicit,
        )

    def _batch_control(self, plan: _PreparedFrames, indices):
        """Pose images and per-row ControlNet weights of a batch, or None without any pose."""
        if all(plan.poses[i] is None for i in indices):
            return None  # no ControlNet work for a batch without poses
        blank = torch.zeros_like(next(plan.poses[i] for i in indices if plan.poses[i] is not None))
        images = torch.stack([plan.poses[i] if plan.poses[i] is not None else blank for i in indices])
        # Per-row weights: the frame's scale with a pose, 0 for frames without one.
        weights = torch.tensor([plan.scales[i] for i in indices])
        return images.to(self.device, self.dtype), weights.to(self.device, self.dtype)[:, None, None, None]

    def _controlnet_residuals(self, x, step, embeddings, poses, weights):
        cfg = self.config
        fraction_start, fraction_end = step / cfg.num_steps, (step + 1) / cfg.num_steps
        if fraction_start < cfg.controlnet_start or fraction_end > cfg.controlnet_end:
            return None
        self.stats.count("controlnet", x.shape[0])
        down, mid = self.controlnet(
            x, self._timesteps[step], encoder_hidden_states=embeddings.hidden,
            added_cond_kwargs=self._added_cond(embeddings, x),
            controlnet_cond=poses, conditioning_scale=1.0, return_dict=False,
        )
        return [d * weights for d in down], mid * weights

    # ---------------------------------------------------------------- frames: denoising

    def _denoise(self, purpose: str, z, embeddings, processors, control, bar, callback=None, indices=None):
        """Denoise the rows of ``z`` from step ``config.first_step`` to the end, one CFG pair per
        row and step, with ``processors`` installed; mutual attention from ``start_step`` on."""
        cfg = self.config
        with installed(self.unet, processors):
            for i in range(cfg.first_step, cfg.num_steps):
                ctx = CallContext(step=i) if i >= cfg.start_step else None
                z = self.ddim.denoise(self._guided(purpose, z, i, embeddings, ctx, control), i, z)
                if callback is not None:
                    callback(i, indices, z)
                bar.update()
        return z

    def _record_maps(self, guide: MaskGuide | None) -> bool:
        # Frames with automatic masks need their own mask-level cross-attention maps.
        return guide is not None and any(tokens is not None for tokens in guide.frame_tokens)

    def _anchor_key(self, plan: _PreparedFrames, branch: SourceBranch, index: int) -> str:
        cfg = self.config
        source_mask = None if plan.masks is None else plan.masks.source_explicit
        settings = [repr(branch.key), cfg.frame_start, cfg.first_step, cfg.seed if cfg.frame_start == "noise" else None,
                    cfg.controlnet_start, cfg.controlnet_end, None if cfg.mask is None else cfg.mask.threshold]
        return _digest(settings, source_mask, plan.digests[index])

    @torch.no_grad()
    def anchor_branch(self, inv: InvertedSource, source_prompt: str, anchor: FrameSpec | str) -> AnchorBranch:
        """Render (or reuse) the anchor frame with plain MasaCtrl, keeping its keys/values of the
        controlled blocks and steps (counted as ``anchor_calls``/``anchor_samples``)."""
        self._check_inversion(inv)
        plan = self._plan_frames(inv, [anchor], source_prompt, lambda i: "anchor")
        return self._anchor_branch(inv, source_prompt, plan, 0)

    def _anchor_branch(self, inv, source_prompt, plan: _PreparedFrames, index: int) -> AnchorBranch:
        branch = self.source_branch(inv, source_prompt)
        key = self._anchor_key(plan, branch, index)
        if self._anchor is not None and self._anchor.key == key:
            return self._anchor
        self._anchor = None  # free the previous anchor's keys/values first
        shapes = level_shapes(*inv.trajectory.shape[2:])
        guide = self._mask_guide(plan, [index], shapes, branch.tokens, branch.maps)
        kv, masks = {}, {}
        processors = self._processors(
            lambda block: RecordAnchorKeysValues(block, branch.kv, kv, masks, guide),
            self._record_maps(guide), inv.trajectory.shape[2:])
        embeddings = self._pair_embeddings([self._frame_conditioning(plan.specs[index])])
        with self._bar(self.config.num_steps - self.config.first_step, "anchor frame") as bar:
            z = self._denoise("anchor", plan.starts[index], embeddings, processors,
                              self._batch_control(plan, [index]), bar)
        if guide is not None:
            guide.report()
        self._anchor = AnchorBranch(key, plan.digests[index], kv, masks, z)
        return self._anchor

    def _frame_attention(self, branch: SourceBranch, anchor: AnchorBranch | None, guide):
        """The controlled self-attention of a frame batch: over the source, or the source and the anchor."""
        if anchor is None:
            return lambda block: MutualSelfAttention(block, branch.kv, guide)
        log_weight = math.log(self.config.anchor_weight)
        return lambda block: CrossFrameAttention(block, branch.kv, anchor.kv, anchor.masks, log_weight, guide)

    @torch.no_grad()
    def render(self, inv: InvertedSource, source_prompt: str, frames, batch_size: int = 4,
               output_type: str = "pil", callback=None, anchor: FrameSpec | str | None = None):
        """Render ``frames`` (FrameSpec or prompt strings) from the inverted source.

        Returns PIL images, an (N, H, W, 3) float array in [0, 1] ("np") or latents ("latent"), in
        frame order. ``callback(step, frame_indices, latents)`` is called after every denoising
        step of every batch (frames identical to the anchor frame come from its cache and get no
        calls). With ``cross_frame="anchor"`` the anchor is ``anchor`` when given (for a chunk of a
        sequence that does not hold its anchor frame), else ``frames[config.anchor_frame]``.
        """
        cfg = self.config

        # 1. Check inputs: everything that can be refused is refused before any UNet call.
        self._check_inversion(inv)
        if output_type not in OUTPUT_TYPES:
            raise EngineInputError(f"output_type: {output_type!r} is not one of {OUTPUT_TYPES}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EngineInputError(f"batch_size: {batch_size!r} must be a whole number >= 1")
        if not isinstance(source_prompt, str):
            raise EngineInputError(f"source_prompt: expected a string, got {type(source_prompt).__name__}")
        if anchor is not None and cfg.cross_frame != "anchor":
            raise EngineInputError("anchor: given, but cross_frame='none'; set ControlConfig(cross_frame='anchor') "
                                   "or drop the anchor")

        # 2. Prepare frames: start latents, pose maps, masks (and the anchor's, when it is not a frame).
        plan = self._plan_frames(inv, frames, source_prompt, lambda i: f"frames[{i}]")
        anchor_plan, anchor_index = None, None
        if cfg.cross_frame == "anchor":
            if anchor is not None:
                anchor_plan, anchor_index = self._plan_frames(inv, [anchor], source_prompt, lambda i: "anchor"), 0
            elif cfg.anchor_frame >= len(plan.specs):
                raise EngineInputError(
                    f"anchor_frame: {cfg.anchor_frame} is out of range for {len(plan.specs)} frames; pick an index "
                    "below that, or pass render(..., anchor=FrameSpec(...)) for a chunk without its anchor frame"
                )
            else:
                anchor_plan, anchor_index = plan, cfg.anchor_frame

        # 3. Source branch: the source's keys/values at the controlled steps (cached per inversion).
        branch = self.source_branch(inv, source_prompt)

        # 4. Anchor frame: rendered first with plain MasaCtrl, its keys/values cached like the source's.
        anchor_branch = None
        if anchor_plan is not None:
            anchor_branch = self._anchor_branch(inv, source_prompt, anchor_plan, anchor_index)
        # Frames identical to the anchor are the anchor's own render (its cross_frame="none" frame).
        done = {i: anchor_branch.latents for i, d in enumerate(plan.digests)
                if anchor_branch is not None and d == anchor_branch.spec_digest}

        # 5. Denoise the other frames in batches, each over the cached keys/values. A batch holds
        # frames of one conditioning length (chunks of a long prompt), so that no frame is padded
        # for its neighbours' sake: a frame renders the same in any batch.
        todo = [i for i in range(len(plan.specs)) if i not in done]
        conditioning = {i: self._frame_conditioning(plan.specs[i]) for i in todo}
        lengths = sorted({c.tokens for c in conditioning.values()})
        groups = [[i for i in todo if conditioning[i].tokens == n] for n in lengths]
        batches = [g[i : i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
        shapes = level_shapes(*inv.trajectory.shape[2:])
        steps = cfg.num_steps - cfg.first_step
        with self._bar(len(batches) * steps, f"frames ({len(todo)})") as bar:
            for indices in batches:
                guide = self._mask_guide(plan, indices, shapes, branch.tokens, branch.maps)
                processors = self._processors(self._frame_attention(branch, anchor_branch, guide),
                                              self._record_maps(guide), shapes[0])
                embeddings = self._pair_embeddings([conditioning[i] for i in indices])
                z = torch.cat([plan.starts[i] for i in indices])
                z = self._denoise("frame", z, embeddings, processors, self._batch_control(plan, indices), bar,
                                  callback, indices)
                if guide is not None:
                    guide.report()
                done.update({i: z[j : j + 1] for j, i in enumerate(indices)})
        latents = torch.cat([done[i] for i in range(len(plan.specs))])

        # 6. Decode, in batches of the same size.
        if output_type == "latent":
            return latents
        return to_output(torch.cat([self.decode(latents[i : i + batch_size])
                                    for i in range(0, len(latents), batch_size)]), output_type)

    # ---------------------------------------------------------------- synthesis mode

    def _generation(self, prompt: str, seed: int, height: int, width: int) -> list[torch.Tensor]:
        """Plain DDIM sampling under CFG from seeded noise: the latents z_T, ..., z_0."""
        check_size(height, width)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise EngineInputError(f"seed: {seed!r} must be a whole number")
        if not isinstance(prompt, str):
            raise EngineInputError(f"prompt: expected a string, got {type(prompt).__name__}")
        channels = self.unet.config.in_channels
        z = _initial_noise(seed, (1, channels, height // 8, width // 8)).to(self.device, self.dtype)
        embeddings = self._pair_embeddings([prompt])
        latents = [z]
        with self._bar(self.config.num_steps, "generate source") as bar:
            for i in range(self.config.num_steps):
                z = self.ddim.denoise(self._guided("generation", z, i, embeddings), i, z)
                latents.append(z)
                bar.update()
        return latents

    @torch.no_grad()
    def generate(self, prompt: str, seed: int = 0, height: int = 512, width: int = 512):
        """A source image from a prompt (plain DDIM sampling, no control), as a PIL image."""
        return to_output(self.decode(self._generation(prompt, seed, height, width)[-1]), "pil")[0]

    @torch.no_grad()
    def synthesize(self, prompt: str, seed: int = 0, height: int = 512, width: int = 512) -> InvertedSource:
        """Generate a source from ``prompt`` and keep the generation's own trajectory as the
        source: MasaCtrl's synthesis, without a decode-encode-invert round trip.

        Returns an ``InvertedSource`` whose ``trajectory[T]`` is the drawn noise and
        ``trajectory[0]`` the final latent, with the decoded source in its ``image`` attribute
        (a PIL image). Render frames from it with ``source_prompt=prompt`` and source correction
        on (the default): the source branch then is the generation itself, and every frame is
        what the published pipeline makes of a ``[source, frame]`` batch from the same start
        code. Costs T generation CFG pairs and no inversion call.
        """
        latents = self._generation(prompt, seed, height, width)
        image = to_output(self.decode(latents[-1]), "pil")[0]
        trajectory = torch.cat(latents[::-1])  # trajectory[k]: k steps above the final latent
        return InvertedSource(trajectory, prompt, height, width, self.ddim.timesteps, image=image)
