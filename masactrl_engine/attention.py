"""Attention processors: one small class per behaviour, installed on the UNet for one pass.

Every processor takes the per-call state as the ``masactrl`` keyword (diffusers forwards
``cross_attention_kwargs`` to processors), so nothing is hidden in globals and a call without it
is plain attention. All attention goes through ``scaled_dot_product_attention``; the only explicit
probabilities computed are the small cross-attention maps that masks need.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .masks import MaskGuide

_BLOCK = re.compile(r"^(down_blocks|mid_block|up_blocks)\.?(\d*)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn[12])$")
_PART_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


@dataclass
class CallContext:
    """State of one controlled UNet call: its step, and the mask-level cross-attention maps it
    has produced so far as ``(block index, maps of the conditional rows)``."""

    step: int
    maps: list[tuple[int, torch.Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # module name, e.g. "up_blocks.3.attentions.0.transformer_blocks.0.attn1"
    block: int  # transformer block index in execution order
    is_cross: bool


def attention_layers(unet) -> list[AttentionLayer]:
    """The UNet's attention modules with transformer blocks numbered in execution order.

    ``unet.attn_processors`` lists up-blocks before the mid-block (module registration order), so
    the order is rebuilt from the names: down, mid, up; then attention module; then block.
    """
    parsed = []
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        match = _BLOCK.match(name)
        if match is None:
            raise ValueError(f"unexpected attention module {name!r}: not an SD-style transformer block")
        part, level, attention, block, kind = match.groups()
        order = (_PART_ORDER[part], int(level or 0), int(attention), int(block))
        parsed.append((order, name, kind == "attn2"))
    orders = sorted({order for order, _, _ in parsed})
    index = {order: i for i, order in enumerate(orders)}
    return [AttentionLayer(name, index[order], is_cross) for order, name, is_cross in sorted(parsed)]


@contextlib.contextmanager
def installed(unet, processors: dict[str, object]):
    """Set ``processors`` (module name -> processor) on the UNet for the duration of a pass."""
    original = unet.attn_processors
    unet.set_attn_processor({f"{name}.processor": proc for name, proc in processors.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def _merge(attn, x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = x.shape
    out = x.transpose(1, 2).reshape(batch, tokens, heads * dim)
    return attn.to_out[1](attn.to_out[0](out))


def _query(attn, hidden_states):
    return _heads(attn, attn.to_q(hidden_states))


def _keys_values(attn, context):
    return _heads(attn, attn.to_k(context)), _heads(attn, attn.to_v(context))


class PlainAttention:
    """Standard attention (what ``AttnProcessor2_0`` computes for SD's transformer blocks)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = _query(attn, hidden_states)
        k, v = _keys_values(attn, context)
        return _merge(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale))


class RecordKeysValues:
    """Source pass, controlled self-attention: plain attention, and keep its keys and values.

    ``store[(step, block)]`` receives ``(k, v)`` of shape (2, heads, tokens, head_dim): the
    unconditional and the conditional source rows.
    """

    def __init__(self, block: int, store: dict):
        self.block, self.store = block, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        q = _query(attn, hidden_states)
        k, v = _keys_values(attn, hidden_states)
        if masactrl is not None:
            self.store[(masactrl.step, self.block)] = (k, v)
        return _merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))


class RecordCrossAttentionMaps:
    """Cross-attention at the mask level (1/32 of the image side): attention with explicit
    probabilities, whose head average for the conditional rows is appended to the call's maps."""

    def __init__(self, block: int, tokens_at_mask_level: int):
        self.block, self.tokens = block, tokens_at_mask_level

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        q = _query(attn, hidden_states)
        k, v = _keys_values(attn, encoder_hidden_states)
        if masactrl is None or q.shape[2] != self.tokens:
            return _merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))
        probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)
        conditional = probs[probs.shape[0] // 2 :].mean(dim=1)  # (rows, tokens, text tokens)
        masactrl.maps.append((self.block, conditional.float()))
        return _merge(attn, probs @ v)


def mutual_attention(q: torch.Tensor, k_src: torch.Tensor, v_src: torch.Tensor, scale: float, mask=None):
    """Frames' queries over the source's keys/values, per CFG half.

    ``q`` is (2B, heads, N, d) ordered [B unconditional frames | B conditional frames]; ``k_src``
    and ``v_src`` are (2, heads, M, d) ordered [unconditional source, conditional source]. The
    frames of one half are folded into the token axis so that one SDPA call serves them all
    without copying the source's keys B times.
    """
    rows, heads, tokens, dim = q.shape
    frames = rows // 2
    folded = q.view(2, frames, heads, tokens, dim).transpose(1, 2).reshape(2, heads, frames * tokens, dim)
    out = F.scaled_dot_product_attention(folded, k_src, v_src, attn_mask=mask, scale=scale)
    return out.view(2, heads, frames, tokens, dim).transpose(1, 2).reshape(rows, heads, tokens, dim)


class MutualSelfAttention:
    """Frame pass, controlled self-attention: queries of the frames, keys and values of the source.

    With a ``guide`` (mask guidance), foreground queries attend to the source's foreground and
    background queries to its background: ``M_f * O_fg + (1 - M_f) * O_bg``.
    """

    def __init__(self, block: int, source_kv: dict, guide: "MaskGuide | None" = None):
        self.block, self.source_kv, self.guide = block, source_kv, guide

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        q = _query(attn, hidden_states)
        if masactrl is None:
            k, v = _keys_values(attn, hidden_states)
            return _merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))
        k_src, v_src = self.source_kv[(masactrl.step, self.block)]
        if self.guide is None:
            return _merge(attn, mutual_attention(q, k_src, v_src, attn.scale))
        return _merge(attn, self.guide.attend(q, k_src, v_src, attn.scale, masactrl, self.block))
