"""The per-call state and the attention kernels of mutual self-attention over cached keys/values.

This module sits below both ``attention`` (the processors) and ``masks`` (mask guidance): both
use these pieces, and neither needs the other's internals for them.

Layout conventions. A UNet call carries ``halves`` CFG halves (2 under classifier-free guidance:
[unconditional rows | conditional rows]; 1 without guidance), each with the same frames in the
same order. Cached keys/values (the source's, an anchor frame's) hold one row per half:
``(halves, heads, tokens, head_dim)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

CFG_HALVES = 2  # rows per sample under classifier-free guidance: unconditional, conditional


@dataclass
class CallContext:
    """State of one controlled UNet call: its denoising step, how many CFG halves its batch holds
    (set by the engine where it lays out the batch), and the mask-level cross-attention maps the
    call has produced so far as ``(block index, maps of the conditional rows)``."""

    step: int
    maps: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    halves: int = CFG_HALVES


def mutual_attention(q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, scale: float, mask=None):
    """Frames' queries over cached keys/values, each CFG half over its own cached row.

    ``q`` is (halves * B, heads, N, d) ordered half by half; ``k_src`` and ``v_src`` are
    (halves, heads, M, d), so the number of halves is ``k_src.shape[0]``. The frames of one half
    are folded into the token axis so that one SDPA call serves every frame, head and half
    without copying the cached keys B times. ``mask`` is an SDPA ``attn_mask`` over the M keys
    (boolean: which keys to keep; float: added to the logits), broadcast to every query.
    """
    rows, heads, tokens, dim = q.shape
    halves = k_src.shape[0]
    if rows % halves:
        raise ValueError(f"{rows} query rows do not split into {halves} CFG halves")
    frames = rows // halves
    folded = q.view(halves, frames, heads, tokens, dim).transpose(1, 2).reshape(halves, heads, frames * tokens, dim)
    out = F.scaled_dot_product_attention(folded, k_src, v_src, attn_mask=mask, scale=scale)
    return out.view(halves, heads, frames, tokens, dim).transpose(1, 2).reshape(rows, heads, tokens, dim)


@dataclass(frozen=True)
class AnchorKeys:
    """An anchor frame's keys/values at one (step, block), to be attended to beside the source's.

    ``mask`` is the anchor's own subject mask on this layer's token grid (tokens,) when mask
    guidance is on (``None`` when none could be made here); ``log_weight`` is added to the
    logits of the anchor's keys (``log(anchor_weight)``: 0 weighs them like the source's).
    """

    k: torch.Tensor
    v: torch.Tensor
    log_weight: float
    mask: torch.Tensor | None = None


def joint_keys_values(k_src, v_src, anchor: AnchorKeys):
    """Source and anchor keys/values concatenated along the token axis, and the logit bias
    (1, 1, 1, M_src + M_anchor): 0 on the source's keys, ``log_weight`` on the anchor's."""
    k = torch.cat([k_src, anchor.k], dim=2)
    v = torch.cat([v_src, anchor.v], dim=2)
    bias = torch.zeros(k.shape[2], dtype=k_src.dtype, device=k_src.device)
    bias[k_src.shape[2] :] = anchor.log_weight
    return k, v, bias[None, None, None, :]


def keep_with_bias(keep: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A float ``attn_mask``: the bias where ``keep`` is true, -inf (key excluded) elsewhere."""
    return torch.where(keep, bias, torch.full_like(bias, -math.inf))
