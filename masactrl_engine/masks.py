"""Mask guidance: subject masks from cross-attention maps (or explicit images) and the masked
mutual attention ``M_f * O_fg + (1 - M_f) * O_bg``."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import CallContext, mutual_attention
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


def subject_positions(tokenizer, prompt: str, subject: str) -> list[int]:
    """Token positions of every word of ``subject`` in the encoded ``prompt`` (words may span
    several tokens; every occurrence counts)."""
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=True, max_length=limit).input_ids
    positions: list[int] = []
    for word in subject.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        found = [i for i in range(len(ids) - len(pieces) + 1) if ids[i : i + len(pieces)] == pieces]
        if not pieces or not found:
            raise EngineInputError(
                f"mask.subject: the word {word!r} does not occur in the prompt {prompt!r} "
                f"(within its first {limit} tokens); use a word of the prompt or give an explicit mask"
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
) -> list[torch.Tensor | None]:
    """Binary (tokens,) masks per row from the mask-level maps of blocks before ``before_block``:
    subject tokens summed, layers averaged, min-max normalised, upsampled, thresholded.
    ``None`` for a row whose map is constant (it cannot be normalised)."""
    usable = [m for block, m in maps if block < before_block]
    if not usable:
        return [None] * len(rows_tokens)
    mean = torch.stack(usable).mean(0)  # (rows, mask tokens, text tokens)
    out: list[torch.Tensor | None] = []
    for row, tokens in enumerate(rows_tokens):
        image = mean[row][:, tokens].sum(-1).view(1, *mask_grid)
        low, high = image.min(), image.max()
        if not high > low:
            out.append(None)
            continue
        out.append(_binary((image - low) / (high - low), grid, threshold)[0])
    return out


def explicit_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return _binary(mask[0], grid, 0.5)[0]


def _degenerate(mask: torch.Tensor | None) -> str | None:
    if mask is None:
        return "mask could not be formed (constant map, or no mask-level maps before this layer)"
    total = float(mask.sum())
    if total == 0:
        return "mask empty"
    if total == mask.numel():
        return "mask full"
    return None


@dataclass
class MaskGuide:
    """Masks for one batch of frames.

    Source side: an explicit mask or the source branch's maps (per step) with its subject token
    positions. Frame side: per frame an explicit mask or subject token positions.
    """

    threshold: float
    shapes: list[tuple[int, int]]
    frame_indices: list[int]
    frame_tokens: list[list[int] | None]
    frame_explicit: list[torch.Tensor | None]
    source_tokens: list[int] | None = None
    source_maps: dict[int, list[tuple[int, torch.Tensor]]] | None = None
    source_explicit: torch.Tensor | None = None
    fallbacks: Counter = field(default_factory=Counter)

    def _source_mask(self, ctx: CallContext, block: int, grid) -> torch.Tensor | None:
        if self.source_explicit is not None:
            return explicit_mask(self.source_explicit, grid)
        maps = self.source_maps.get(ctx.step, [])
        return auto_masks(maps, [self.source_tokens], block, self.shapes[MASK_LEVEL], grid, self.threshold)[0]

    def _frame_masks(self, ctx: CallContext, block: int, grid) -> list[torch.Tensor | None]:
        needs_auto = [t if e is None else [] for t, e in zip(self.frame_tokens, self.frame_explicit)]
        auto = auto_masks(ctx.maps, needs_auto, block, self.shapes[MASK_LEVEL], grid, self.threshold) if any(
            e is None for e in self.frame_explicit) else [None] * len(needs_auto)
        return [explicit_mask(e, grid) if e is not None else a for e, a in zip(self.frame_explicit, auto)]

    @staticmethod
    def _problem(source: torch.Tensor | None, frame: torch.Tensor | None) -> str | None:
        if problem := _degenerate(source):
            return f"source {problem}"
        if problem := _degenerate(frame):
            return f"frame {problem}"
        return None

    def attend(self, q, k_src, v_src, scale, ctx: CallContext, block: int):
        grid = grid_of(q.shape[2], self.shapes)
        source = self._source_mask(ctx, block, grid)
        frames = self._frame_masks(ctx, block, grid)
        problems = [self._problem(source, frame) for frame in frames]
        for index, problem in zip(self.frame_indices, problems):
            if problem:
                self.fallbacks[(index, problem)] += 1
        if all(problems):
            return mutual_attention(q, k_src, v_src, scale)
        keep = source.bool()[None, None, None, :]
        fg = mutual_attention(q, k_src, v_src, scale, mask=keep)
        bg = mutual_attention(q, k_src, v_src, scale, mask=~keep)
        weight = torch.stack([torch.zeros_like(source[:1]).expand(q.shape[2]) if problem else frame
                              for frame, problem in zip(frames, problems)])
        weight = weight.repeat(2, 1)[:, None, :, None].to(q.dtype)  # both CFG halves use the frame's mask
        out = weight * fg + (1 - weight) * bg
        if not any(problems):
            return out
        fallback = torch.tensor([bool(p) for p in problems], device=q.device).repeat(2)[:, None, None, None]
        return torch.where(fallback, mutual_attention(q, k_src, v_src, scale), out)

    def report(self) -> None:
        by_frame: dict[int, list[str]] = {}
        for (index, problem), n in sorted(self.fallbacks.items()):
            by_frame.setdefault(index, []).append(f"{problem} at {n} step/layer pairs")
        for index, problems in by_frame.items():
            log.warning(
                "frame %d: %s; used plain mutual self-attention there", index, ", ".join(problems)
            )
