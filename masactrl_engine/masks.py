"""Mask guidance: subject masks from cross-attention maps (or explicit images) and the masked
mutual attention ``M_f * O_fg + (1 - M_f) * O_bg``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .mutual import AnchorKeys, CallContext, joint_keys_values, keep_with_bias, mutual_attention
from .errors import EngineInputError

log = logging.getLogger("masactrl_engine")

# The published method reads the 16x16 maps of a 512x512 image: the level at 1/32 of the side,
# i.e. the UNet's third level (latent / 4). For other sizes and aspect ratios the same level.
MASK_LEVEL = 2


def level_shapes(latent_height: int, latent_width: int, levels: int = 4) -> list[tuple[int, int]]:
    """Token grid of each UNet level; its stride-2 convolutions round up."""
    shapes = [(latent_height, latent_width)]
    for _ in range(levels - 1):
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def grid_of(tokens: int, shapes: list[tuple[int, int]]) -> tuple[int, int]:
    for h, w in shapes:
        if h * w == tokens:
            return h, w
    raise ValueError(f"no UNet level has {tokens} tokens (levels: {shapes})")


def subject_positions(tokenizer, prompt: str, subject: str, ids: list[int] | None = None) -> list[int]:
    """Token positions of every word of ``subject`` in the encoded ``prompt`` (words may span
    several tokens; every occurrence counts).

    ``ids`` are the prompt's token ids laid out as its conditioning's tokens (for a weighted or
    long prompt: the parsed, chunked sequence, ``PromptEncoder.token_ids``); without them, the
    prompt's first window as the plain tokenizer cuts it.
    """
    limit = tokenizer.model_max_length
    if ids is None:
        ids = tokenizer(prompt, truncation=True, max_length=limit).input_ids
    positions: list[int] = []
    for word in subject.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        found = [i for i in range(len(ids) - len(pieces) + 1) if ids[i : i + len(pieces)] == pieces]
        if not pieces or not found:
            raise EngineInputError(
                f"mask.subject: the word {word!r} does not occur in the prompt {prompt!r} "
                f"(in its {len(ids)} tokens, weighting syntax parsed away); use a word of the prompt or give an "
                "explicit mask"
            )
        positions += [i + j for i in found for j in range(len(pieces))]
    return sorted(set(positions))


def _binary(continuous: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """Nearest upsampling to the layer's grid, then thresholding (the published order)."""
    up = F.interpolate(continuous[:, None], size=grid, mode="nearest")[:, 0]
    return (up >= threshold).flatten(1).to(continuous.dtype)


def auto_masks(
    maps: list[tuple[int, torch.Tensor]], rows_tokens: list[list[int]], before_block: int,
    mask_grid: tuple[int, int], grid: tuple[int, int], threshold: float,
) -> torch.Tensor | None:
    """Binary (rows, tokens) masks from the mask-level maps of blocks before ``before_block``:
    subject tokens summed, layers averaged, min-max normalised, upsampled, thresholded.

    ``None`` when no such block has run yet. A constant map cannot be normalised and comes out
    empty, which the caller treats as degenerate. No host-device synchronisation happens here.
    """
    usable = [m for block, m in maps if block < before_block]
    if not usable:
        return None
    mean = torch.stack(usable).mean(0)  # (rows, mask tokens, text tokens)
    images = torch.stack([mean[row][:, tokens].sum(-1) for row, tokens in enumerate(rows_tokens)])
    images = images.view(len(rows_tokens), *mask_grid)
    low = images.flatten(1).min(1).values[:, None, None]
    high = images.flatten(1).max(1).values[:, None, None]
    normalised = torch.where(high > low, (images - low) / (high - low).clamp_min(1e-12), torch.full_like(images, -1.0))
    return _binary(normalised, grid, threshold)


def explicit_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return _binary(mask[0], grid, 0.5)[0]


# Why a frame fell back to plain mutual attention at a (step, layer): the columns of
# ``MaskGuide.counts``. The first four are degenerate masks; the last means no mask could be made.
REASONS = ("source mask empty", "source mask full", "frame mask empty", "frame mask full",
           "no mask-level cross-attention maps before this layer")
SOURCE_EMPTY, SOURCE_FULL, FRAME_EMPTY, FRAME_FULL, NO_MAPS = range(len(REASONS))
DEGENERATE = slice(SOURCE_EMPTY, FRAME_FULL + 1)


@dataclass
class MaskGuide:
    """Masks for one batch of frames.

    Source side: an explicit mask or the source branch's maps (per step) with its subject token
    positions. Frame side: per frame an explicit mask or subject token positions.
    Degenerate masks (empty or full) fall back to plain mutual attention for the frame; the
    counts stay on the device until ``report`` so the denoising loop never waits for the host.
    """

    threshold: float
    shapes: list[tuple[int, int]]
    frame_indices: list[int]
    frame_tokens: list[list[int] | None]
    frame_explicit: list[torch.Tensor | None]
    source_tokens: list[int] | None = None
    source_maps: dict[int, list[tuple[int, torch.Tensor]]] | None = None
    source_explicit: torch.Tensor | None = None
    counts: torch.Tensor | None = None  # (frames, len(REASONS))
    _source_cache: dict = field(default_factory=dict)  # (step, block, grid) -> source mask

    def _count(self, reasons: torch.Tensor) -> None:
        self.counts = reasons.long() if self.counts is None else self.counts + reasons.long()

    def _source_mask(self, ctx: CallContext, block: int, grid) -> torch.Tensor | None:
        key = (ctx.step, block, grid)
        if key not in self._source_cache:
            if self.source_explicit is not None:
                self._source_cache[key] = explicit_mask(self.source_explicit, grid)
            else:
                masks = auto_masks(self.source_maps.get(ctx.step, []), [self.source_tokens], block,
                                   self.shapes[MASK_LEVEL], grid, self.threshold)
                self._source_cache[key] = None if masks is None else masks[0]
        return self._source_cache[key]

    def frame_masks(self, ctx: CallContext, block: int, tokens: int) -> torch.Tensor | None:
        """The frames' binary masks (frames, tokens) on the grid of a layer with ``tokens`` tokens."""
        return self._frame_masks(ctx, block, grid_of(tokens, self.shapes))

    def _frame_masks(self, ctx: CallContext, block: int, grid) -> torch.Tensor | None:
        auto_rows = [i for i, explicit in enumerate(self.frame_explicit) if explicit is None]
        auto = None
        if auto_rows:
            auto = auto_masks(ctx.maps, [self.frame_tokens[i] for i in auto_rows], block,
                              self.shapes[MASK_LEVEL], grid, self.threshold)
            if auto is None:
                return None
        rows, next_auto = [], iter(range(len(auto_rows)))
        for explicit in self.frame_explicit:
            rows.append(explicit_mask(explicit, grid) if explicit is not None else auto[next(next_auto)])
        return torch.stack(rows)

    def attend(self, q, k_src, v_src, scale, ctx: CallContext, block: int, anchor: AnchorKeys | None = None):
        """Masked mutual attention of the batch's queries ``q`` (``ctx.halves`` CFG halves).

        With an ``anchor``, the keys are the source's and the anchor's together: the foreground
        keys are the source's inside its mask and the anchor's inside the anchor's own mask.
        """
        frames, grid = len(self.frame_indices), grid_of(q.shape[2], self.shapes)
        if anchor is None:
            keys, values, bias = k_src, v_src, None
        else:
            keys, values, bias = joint_keys_values(k_src, v_src, anchor)
        plain = mutual_attention(q, keys, values, scale, mask=bias)
        source = self._source_mask(ctx, block, grid)
        masks = self._frame_masks(ctx, block, grid)
        if source is None or masks is None or (anchor is not None and anchor.mask is None):
            reasons = torch.zeros(frames, len(REASONS), dtype=torch.bool, device=q.device)
            reasons[:, NO_MAPS] = True
            self._count(reasons)
            return plain
        tokens = float(source.numel())
        source_sum, frame_sums = source.sum(), masks.sum(-1)
        reasons = torch.zeros(frames, len(REASONS), dtype=torch.bool, device=q.device)
        reasons[:, SOURCE_EMPTY] = source_sum == 0
        reasons[:, SOURCE_FULL] = source_sum == tokens
        reasons[:, FRAME_EMPTY] = frame_sums == 0
        reasons[:, FRAME_FULL] = frame_sums == tokens
        self._count(reasons)
        keep = source.bool() if anchor is None else torch.cat([source.bool(), anchor.mask.bool()])
        keep = keep[None, None, None, :]
        # A fully masked key set gives NaN rows in SDPA; torch.where below never selects them
        # (the source alone has keys on both sides whenever no fallback applies).
        if bias is None:
            fg = mutual_attention(q, keys, values, scale, mask=keep)
            bg = mutual_attention(q, keys, values, scale, mask=~keep)
        else:
            fg = mutual_attention(q, keys, values, scale, mask=keep_with_bias(keep, bias))
            bg = mutual_attention(q, keys, values, scale, mask=keep_with_bias(~keep, bias))
        halves = ctx.halves  # every CFG half uses the frame's mask
        weight = masks.repeat(halves, 1)[:, None, :, None].to(q.dtype)
        blended = weight * fg + (1 - weight) * bg
        fallback = reasons[:, DEGENERATE].any(1).repeat(halves)[:, None, None, None]
        return torch.where(fallback, plain, blended)

    def report(self) -> None:
        """Log, per frame, where masks were degenerate and plain mutual attention was used."""
        if self.counts is None:
            return
        for index, row in zip(self.frame_indices, self.counts.tolist()):
            problems = [f"{reason} at {n} step/layer pairs" for reason, n in zip(REASONS, row) if n]
            if problems:
                log.warning("frame %d: %s; used plain mutual self-attention there", index, ", ".join(problems))
