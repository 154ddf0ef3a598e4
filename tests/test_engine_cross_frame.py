"""Cross-frame (anchor) attention and the CFG-halves layout against explicit per-head formulas on
random tensors; the attention modules the processors refuse."""

import copy
import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from masactrl_engine import EngineInputError
from masactrl_engine.attention import (
    CrossFrameAttention,
    MutualSelfAttention,
    RecordAnchorKeysValues,
    attention_layers,
)
from masactrl_engine.masks import MaskGuide
from masactrl_engine.mutual import CallContext

DIM, HEADS = 16, 4
D = DIM // HEADS


def _attention():
    torch.manual_seed(0)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=D).eval()


def _kv(attn, rows):
    """Keys/values of hidden rows in the cached layout (rows, heads, tokens, head_dim)."""
    n = rows.shape[1]
    return (attn.to_k(rows).view(rows.shape[0], n, HEADS, D).transpose(1, 2),
            attn.to_v(rows).view(rows.shape[0], n, HEADS, D).transpose(1, 2))


def _explicit(attn, frames_hidden, source_hidden, anchor_hidden=None, log_weight=0.0, source_mask=None,
              anchor_mask=None, frame_masks=None):
    """Per query row r, per head h: softmax over the concatenated [source; anchor] keys of r's CFG
    half, the anchor's logits shifted by log_weight; masked: M_f * O_fg + (1 - M_f) * O_bg with the
    foreground keys the source's inside its mask and the anchor's inside its own."""
    rows, halves = frames_hidden.shape[0], source_hidden.shape[0]
    frames = rows // halves
    out = torch.empty(rows, frames_hidden.shape[1], DIM)
    for r in range(rows):
        half = r // frames
        q = attn.to_q(frames_hidden[r])
        context = source_hidden[half] if anchor_hidden is None else torch.cat([source_hidden[half], anchor_hidden[half]])
        k, v = attn.to_k(context), attn.to_v(context)
        m_src = source_hidden.shape[1]
        for h in range(HEADS):
            sl = slice(h * D, (h + 1) * D)
            sim = q[:, sl] @ k[:, sl].T / math.sqrt(D)
            sim[:, m_src:] += log_weight
            if source_mask is None:
                out[r, :, sl] = torch.softmax(sim, -1) @ v[:, sl]
                continue
            keep = source_mask if anchor_hidden is None else torch.cat([source_mask, anchor_mask])
            fg = torch.softmax(sim.masked_fill(~keep, float("-inf")), -1) @ v[:, sl]
            bg = torch.softmax(sim.masked_fill(keep, float("-inf")), -1) @ v[:, sl]
            m = frame_masks[r % frames][:, None]
            out[r, :, sl] = m * fg + (1 - m) * bg
    return attn.to_out[0](out)


@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("weight", [1.0, 2.5, 0.3])
def test_cross_frame_attention_equals_softmax_over_source_and_anchor(frames, weight):
    attn = _attention()
    source, anchor = torch.randn(2, 12, DIM), torch.randn(2, 12, DIM)
    hidden = torch.randn(2 * frames, 12, DIM)  # [uncond frames | cond frames]
    with torch.no_grad():
        processor = CrossFrameAttention(10, {(3, 10): _kv(attn, source)}, {(3, 10): _kv(attn, anchor)}, {},
                                        math.log(weight))
        got = processor(attn, hidden, masactrl=CallContext(step=3))
        want = _explicit(attn, hidden, source, anchor, math.log(weight))
        # each CFG half really uses its own source and anchor rows
        swapped = _explicit(attn, hidden, source.flip(0), anchor.flip(0), math.log(weight))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, swapped, atol=1e-3)


def test_masked_cross_frame_attention_splits_anchor_keys_by_the_anchor_mask():
    attn = _attention()
    grid, tokens = (4, 4), 16
    source, anchor, hidden = torch.randn(2, tokens, DIM), torch.randn(2, tokens, DIM), torch.randn(4, tokens, DIM)
    source_mask = torch.zeros(1, 1, *grid)
    source_mask[..., 1:3, 1:3] = 1
    anchor_mask = torch.zeros(tokens)
    anchor_mask[:6] = 1
    frame_masks = [torch.zeros(1, 1, *grid), torch.zeros(1, 1, *grid)]
    frame_masks[0][..., :2, :] = 1
    frame_masks[1][..., :, 2:] = 1
    guide = MaskGuide(threshold=0.1, shapes=[grid, (2, 2), (1, 1)], frame_indices=[0, 1], frame_tokens=[None, None],
                      frame_explicit=frame_masks, source_explicit=source_mask)
    log_weight = math.log(1.7)
    with torch.no_grad():
        processor = CrossFrameAttention(10, {(0, 10): _kv(attn, source)}, {(0, 10): _kv(attn, anchor)},
                                        {(0, 10): anchor_mask}, log_weight, guide)
        got = processor(attn, hidden, masactrl=CallContext(step=0))
        want = _explicit(attn, hidden, source, anchor, log_weight, source_mask.flatten().bool(), anchor_mask.bool(),
                         [m.flatten() for m in frame_masks])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert int(guide.counts.sum()) == 0  # no fallback anywhere


def test_anchor_recorder_outputs_plain_mutual_attention_and_keeps_its_keys_values():
    attn = _attention()
    source, hidden = torch.randn(2, 12, DIM), torch.randn(2, 12, DIM)  # one anchor frame under CFG
    kv = {(2, 11): _kv(attn, source)}
    store, masks = {}, {}
    with torch.no_grad():
        got = RecordAnchorKeysValues(11, kv, store, masks)(attn, hidden, masactrl=CallContext(step=2))
        want = MutualSelfAttention(11, kv)(attn, hidden, masactrl=CallContext(step=2))
        k, v = _kv(attn, hidden)
    assert torch.equal(got, want)
    assert list(store) == [(2, 11)] and torch.equal(store[(2, 11)][0], k) and torch.equal(store[(2, 11)][1], v)
    assert masks == {}  # no mask guidance, no masks recorded


def test_one_cfg_half_without_guidance():
    """With ``CallContext.halves == 1`` (guidance off) every row attends to the one cached row."""
    attn = _attention()
    source, anchor, hidden = torch.randn(1, 12, DIM), torch.randn(1, 12, DIM), torch.randn(3, 12, DIM)
    with torch.no_grad():
        ctx = CallContext(step=0, halves=1)
        plain = MutualSelfAttention(10, {(0, 10): _kv(attn, source)})(attn, hidden, masactrl=ctx)
        joint = CrossFrameAttention(10, {(0, 10): _kv(attn, source)}, {(0, 10): _kv(attn, anchor)}, {}, 0.0)(
            attn, hidden, masactrl=ctx)
        torch.testing.assert_close(plain, _explicit(attn, hidden, source), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(joint, _explicit(attn, hidden, source, anchor), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature, value", [
    ("residual_connection", True), ("rescale_output_factor", 2.0), ("group_norm", torch.nn.GroupNorm(4, 32)),
    ("spatial_norm", torch.nn.Identity()), ("norm_q", torch.nn.LayerNorm(8)),
])
def test_attention_modules_with_unimplemented_features_are_refused(tiny_pipe, feature, value):
    unet = copy.deepcopy(tiny_pipe.unet)
    name = "up_blocks.3.attentions.1.transformer_blocks.0.attn1"
    setattr(unet.get_submodule(name), feature, value)
    with pytest.raises(EngineInputError, match=rf"model: attention module '{name}' uses {feature.split('_q')[0]}"):
        attention_layers(unet)
    assert len(attention_layers(tiny_pipe.unet)) == 32  # the stock tiny UNet is accepted


def test_four_dimensional_inputs_are_refused():
    attn = _attention()
    with pytest.raises(EngineInputError, match="got a 4-D input"):
        MutualSelfAttention(10, {})(attn, torch.randn(1, DIM, 4, 4))
