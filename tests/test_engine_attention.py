"""Attention processors against explicit per-head formulas, and the block numbering."""

import logging

import pytest
import torch
from diffusers.models.attention_processor import Attention

from masactrl_engine.attention import CallContext, MutualSelfAttention, attention_layers
from masactrl_engine.masks import MaskGuide, auto_masks, level_shapes


def _attention(dim=16, heads=4):
    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


def _explicit(attn, frames_hidden, source_hidden, source_mask=None, frame_masks=None):
    """softmax(Q_f K_src^T / sqrt(d)) V_src per head and per CFG half, written out plainly."""
    rows = frames_hidden.shape[0]
    out = torch.empty(rows, frames_hidden.shape[1], attn.heads * (frames_hidden.shape[2] // attn.heads))
    d = frames_hidden.shape[2] // attn.heads
    for r in range(rows):
        half = 0 if r < rows // 2 else 1
        q = attn.to_q(frames_hidden[r])
        k = attn.to_k(source_hidden[half])
        v = attn.to_v(source_hidden[half])
        for h in range(attn.heads):
            sl = slice(h * d, (h + 1) * d)
            sim = q[:, sl] @ k[:, sl].T / d**0.5
            if source_mask is None:
                out[r, :, sl] = torch.softmax(sim, -1) @ v[:, sl]
            else:
                fg = torch.softmax(sim.masked_fill(~source_mask, float("-inf")), -1) @ v[:, sl]
                bg = torch.softmax(sim.masked_fill(source_mask, float("-inf")), -1) @ v[:, sl]
                m = frame_masks[r % (rows // 2)][:, None]
                out[r, :, sl] = m * fg + (1 - m) * bg
    return attn.to_out[0](out)


@pytest.mark.parametrize("frames", [1, 3])
def test_mutual_attention_equals_explicit_formula(frames):
    attn = _attention()
    tokens = 12
    source = torch.randn(2, tokens, 16)  # [unconditional, conditional] source rows
    hidden = torch.randn(2 * frames, tokens, 16)  # [uncond frames | cond frames]
    k = attn.to_k(source).view(2, tokens, 4, 4).transpose(1, 2)
    v = attn.to_v(source).view(2, tokens, 4, 4).transpose(1, 2)
    processor = MutualSelfAttention(block=10, source_kv={(3, 10): (k, v)})
    with torch.no_grad():
        got = processor(attn, hidden, masactrl=CallContext(step=3))
        want = _explicit(attn, hidden, source)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The unconditional and conditional halves really use different source rows.
    with torch.no_grad():
        swapped = _explicit(attn, hidden, source.flip(0))
    assert not torch.allclose(got, swapped, atol=1e-3)


def test_without_context_the_processor_is_diffusers_plain_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention()
    hidden = torch.randn(4, 12, 16)
    with torch.no_grad():
        got = MutualSelfAttention(block=10, source_kv={})(attn, hidden)
        want = AttnProcessor2_0()(attn, hidden)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_masked_mutual_attention_equals_explicit_formula():
    attn = _attention()
    grid = (4, 4)
    tokens = 16
    source = torch.randn(2, tokens, 16)
    hidden = torch.randn(4, tokens, 16)  # two frames
    k = attn.to_k(source).view(2, tokens, 4, 4).transpose(1, 2)
    v = attn.to_v(source).view(2, tokens, 4, 4).transpose(1, 2)
    source_mask = torch.zeros(1, 1, *grid)
    source_mask[..., 1:3, 1:3] = 1
    frame_masks = [torch.zeros(1, 1, *grid), torch.zeros(1, 1, *grid)]
    frame_masks[0][..., :2, :] = 1
    frame_masks[1][..., :, 2:] = 1
    guide = MaskGuide(threshold=0.1, shapes=[grid, (2, 2), (1, 1)], frame_indices=[0, 1], frame_tokens=[None, None],
                      frame_explicit=frame_masks, source_explicit=source_mask)
    processor = MutualSelfAttention(block=10, source_kv={(0, 10): (k, v)}, guide=guide)
    with torch.no_grad():
        got = processor(attn, hidden, masactrl=CallContext(step=0))
        want = _explicit(attn, hidden, source, source_mask.flatten().bool(), [m.flatten() for m in frame_masks])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert int(guide.counts.sum()) == 0  # no fallback anywhere


def test_degenerate_source_mask_falls_back_without_nan(caplog):
    attn = _attention()
    tokens = 16
    source = torch.randn(2, tokens, 16)
    hidden = torch.randn(2, tokens, 16)
    k = attn.to_k(source).view(2, tokens, 4, 4).transpose(1, 2)
    v = attn.to_v(source).view(2, tokens, 4, 4).transpose(1, 2)
    guide = MaskGuide(threshold=0.1, shapes=[(4, 4)], frame_indices=[7], frame_tokens=[None],
                      frame_explicit=[torch.ones(1, 1, 4, 4)], source_explicit=torch.zeros(1, 1, 4, 4))
    with torch.no_grad():
        got = MutualSelfAttention(10, {(0, 10): (k, v)}, guide)(attn, hidden, masactrl=CallContext(step=0))
        plain = MutualSelfAttention(10, {(0, 10): (k, v)})(attn, hidden, masactrl=CallContext(step=0))
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, plain)
    with caplog.at_level(logging.WARNING, logger="masactrl_engine"):
        guide.report()
    assert "frame 7: source mask empty" in caplog.text


def test_auto_masks_use_earlier_blocks_normalise_and_threshold():
    # Two text tokens; subject is token 1. Maps on a 2x2 mask grid, two rows.
    early = torch.tensor([[[0, 0.0], [0, 1.0], [0, 2.0], [0, 3.0]]])  # row 0: increasing
    late = torch.full((1, 4, 2), 100.0)  # block 12: must be ignored before block 12
    maps = [(4, early), (12, late)]
    masks = auto_masks(maps, [[1]], before_block=10, mask_grid=(2, 2), grid=(4, 4), threshold=0.5)
    # normalised: 0, 1/3, 2/3, 1 -> >= 0.5 keeps the bottom row of the 2x2 grid, upsampled to 4x4
    expected = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1.0]]).flatten()
    torch.testing.assert_close(masks[0], expected)
    # A constant map cannot be normalised: it comes out empty (degenerate, so the frame falls back).
    constant = auto_masks([(4, torch.ones(1, 4, 2))], [[1]], 10, (2, 2), (2, 2), 0.1)
    assert torch.equal(constant, torch.zeros(1, 4))
    assert auto_masks(maps, [[1]], before_block=4, mask_grid=(2, 2), grid=(2, 2), threshold=0.1) is None


def test_level_shapes_round_up_like_the_unet():
    assert level_shapes(64, 64) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert level_shapes(9, 12) == [(9, 12), (5, 6), (3, 3), (2, 2)]


def test_blocks_are_numbered_in_execution_order(tiny_pipe):
    layers = attention_layers(tiny_pipe.unet)
    blocks = sorted({layer.block for layer in layers})
    assert blocks == list(range(16))
    by_block = {layer.block: layer.name for layer in layers if not layer.is_cross}
    assert by_block[0].startswith("down_blocks.0.attentions.0.")
    assert by_block[5].startswith("down_blocks.2.attentions.1.")
    assert by_block[6].startswith("mid_block.attentions.0.")
    assert by_block[7].startswith("up_blocks.1.attentions.0.")
    # L = 10 selects the decoder's two highest-resolution levels.
    assert {by_block[b].split(".attentions")[0] for b in range(10, 16)} == {"up_blocks.2", "up_blocks.3"}
    assert sum(layer.is_cross for layer in layers) == 16


def test_one_degenerate_frame_mask_falls_back_for_that_frame_only(caplog):
    attn = _attention()
    grid, tokens = (4, 4), 16
    source = torch.randn(2, tokens, 16)
    hidden = torch.randn(4, tokens, 16)  # two frames
    k = attn.to_k(source).view(2, tokens, 4, 4).transpose(1, 2)
    v = attn.to_v(source).view(2, tokens, 4, 4).transpose(1, 2)
    source_mask = torch.zeros(1, 1, *grid)
    source_mask[..., :2, :] = 1
    good = torch.zeros(1, 1, *grid)
    good[..., :, :2] = 1
    guide = MaskGuide(threshold=0.1, shapes=[grid], frame_indices=[3, 4], frame_tokens=[None, None],
                      frame_explicit=[good, torch.zeros(1, 1, *grid)], source_explicit=source_mask)
    with torch.no_grad():
        got = MutualSelfAttention(10, {(0, 10): (k, v)}, guide)(attn, hidden, masactrl=CallContext(step=0))
        plain = _explicit(attn, hidden, source)
        masked = _explicit(attn, hidden, source, source_mask.flatten().bool(), [good.flatten(), good.flatten()])
    assert not torch.isnan(got).any()
    for row, want in ((0, masked), (2, masked), (1, plain), (3, plain)):  # rows: [u3, u4, c3, c4]
        torch.testing.assert_close(got[row], want[row], atol=1e-5, rtol=1e-5)
    with caplog.at_level(logging.WARNING, logger="masactrl_engine"):
        guide.report()
    assert "frame 4: frame mask empty at 1 step/layer pairs" in caplog.text and "frame 3" not in caplog.text
