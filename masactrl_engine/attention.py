"""Attention processors: one small class per behaviour, installed on the UNet for one pass.

Every processor takes the per-call state as the ``masactrl`` keyword (diffusers forwards
``cross_attention_kwargs`` to processors), so nothing is hidden in globals and a call without it
is plain attention. All attention goes through ``scaled_dot_product_attention``; the only explicit
probabilities computed are the small cross-attention maps that masks need.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
import torch
import torch.nn.functional as F

from .errors import EngineInputError
from .masks import MaskGuide
from .mutual import AnchorKeys, CallContext, joint_keys_values, mutual_attention

__all__ = [
    "AttentionLayer", "CallContext", "CrossFrameAttention", "MutualSelfAttention", "PlainAttention",
    "RecordAnchorKeysValues", "RecordCrossAttentionMaps", "RecordKeysValues", "attention_layers", "installed",
    "mutual_attention",
]

_BLOCK = re.compile(r"^(down_blocks|mid_block|up_blocks)\.?(\d*)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn[12])$")
_PART_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

# What diffusers' AttnProcessor2_0 honours beyond q/k/v projections and SDPA. The processors here
# implement none of it (SD 1.x/2.x/XL transformer blocks use none of it), so a UNet whose
# attention modules use any of it is refused instead of being computed differently.
_UNSUPPORTED = (
    ("spatial_norm", lambda m: getattr(m, "spatial_norm", None) is not None),
    ("group_norm", lambda m: getattr(m, "group_norm", None) is not None),
    ("residual_connection", lambda m: bool(getattr(m, "residual_connection", False))),
    ("rescale_output_factor", lambda m: float(getattr(m, "rescale_output_factor", 1.0)) != 1.0),
    ("norm_q/norm_k", lambda m: getattr(m, "norm_q", None) is not None or getattr(m, "norm_k", None) is not None),
    ("norm_cross", lambda m: getattr(m, "norm_cross", None) is not None),
)


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # module name, e.g. "up_blocks.3.attentions.0.transformer_blocks.0.attn1"
    block: int  # transformer block index in execution order
    is_cross: bool


def attention_layers(unet) -> list[AttentionLayer]:
    """The UNet's attention modules with transformer blocks numbered in execution order.

    ``unet.attn_processors`` lists up-blocks before the mid-block (module registration order), so
    the order is rebuilt from the names: down, mid, up; then attention module; then block.
    Raises ``EngineInputError`` for a module these processors cannot compute faithfully.
    """
    parsed = []
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        match = _BLOCK.match(name)
        if match is None:
            raise EngineInputError(f"model: unexpected attention module {name!r}: not an SD-style transformer block")
        module = unet.get_submodule(name)
        used = [feature for feature, uses in _UNSUPPORTED if uses(module)]
        if used:
            raise EngineInputError(
                f"model: attention module {name!r} uses {', '.join(used)}, which the MasaCtrl attention "
                "processors do not implement; use a Stable Diffusion 1.x/2.x/XL UNet"
            )
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
    if hidden_states.ndim != 3:
        # AttnProcessor2_0 folds (B, C, H, W) inputs into tokens; SD transformer blocks never pass them.
        raise EngineInputError(
            f"model: an attention module got a {hidden_states.ndim}-D input; the MasaCtrl processors take "
            "(batch, tokens, channels) as SD transformer blocks pass it"
        )
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
        rows = probs.shape[0]
        conditional = probs[rows - rows // masactrl.halves :].mean(dim=1)  # last half: (rows, tokens, text tokens)
        masactrl.maps.append((self.block, conditional.float()))
        return _merge(attn, probs @ v)


class MutualSelfAttention:
    """Frame pass, controlled self-attention: queries of the frames, keys and values of the source.

    With a ``guide`` (mask guidance), foreground queries attend to the source's foreground and
    background queries to its background: ``M_f * O_fg + (1 - M_f) * O_bg``.
    """

    def __init__(self, block: int, source_kv: dict, guide: MaskGuide | None = None):
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


class RecordAnchorKeysValues:
    """Anchor pass, controlled self-attention: the anchor frame is rendered with plain MasaCtrl
    (what ``MutualSelfAttention`` computes, so its output is that of a ``cross_frame="none"``
    render), and its own keys/values are kept for the other frames.

    ``store[(step, block)]`` receives ``(k, v)`` of the anchor's rows, one per CFG half; with a
    ``guide``, ``masks[(step, block)]`` receives the anchor's subject mask on this layer's grid
    (or ``None`` where none can be made yet).
    """

    def __init__(self, block: int, source_kv: dict, store: dict, masks: dict, guide: MaskGuide | None = None):
        self.block, self.source_kv, self.store, self.masks, self.guide = block, source_kv, store, masks, guide

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        q = _query(attn, hidden_states)
        k, v = _keys_values(attn, hidden_states)
        if masactrl is None:
            return _merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))
        self.store[(masactrl.step, self.block)] = (k, v)
        k_src, v_src = self.source_kv[(masactrl.step, self.block)]
        if self.guide is None:
            return _merge(attn, mutual_attention(q, k_src, v_src, attn.scale))
        masks = self.guide.frame_masks(masactrl, self.block, q.shape[2])
        self.masks[(masactrl.step, self.block)] = None if masks is None else masks[0]
        return _merge(attn, self.guide.attend(q, k_src, v_src, attn.scale, masactrl, self.block))


class CrossFrameAttention:
    """Frame pass with an anchor: queries of the frames over the keys/values of the source and of
    the anchor frame together (one SDPA call), the anchor's logits shifted by ``log_weight``.

    With a ``guide``, the foreground/background split covers both key sets: the source's keys by
    the source's mask, the anchor's by the anchor's own mask.
    """

    def __init__(self, block: int, source_kv: dict, anchor_kv: dict, anchor_masks: dict, log_weight: float,
                 guide: MaskGuide | None = None):
        self.block, self.source_kv, self.guide = block, source_kv, guide
        self.anchor_kv, self.anchor_masks, self.log_weight = anchor_kv, anchor_masks, log_weight

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        q = _query(attn, hidden_states)
        if masactrl is None:
            k, v = _keys_values(attn, hidden_states)
            return _merge(attn, F.scaled_dot_product_attention(q, k, v, scale=attn.scale))
        key = (masactrl.step, self.block)
        k_src, v_src = self.source_kv[key]
        k_anchor, v_anchor = self.anchor_kv[key]
        anchor = AnchorKeys(k_anchor, v_anchor, self.log_weight, self.anchor_masks.get(key))
        if self.guide is None:
            k, v, bias = joint_keys_values(k_src, v_src, anchor)
            return _merge(attn, mutual_attention(q, k, v, attn.scale, mask=bias))
        return _merge(attn, self.guide.attend(q, k_src, v_src, attn.scale, masactrl, self.block, anchor))
