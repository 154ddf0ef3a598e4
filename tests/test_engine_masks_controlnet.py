"""Mask guidance and ControlNet frames on the tiny checkpoint."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from masactrl_engine import ControlConfig, FrameSpec, MaskConfig, SequenceEngine
from masactrl_engine.masks import subject_positions

SOURCE_PROMPT = "a photo of a cat"


def _image(h=64, w=64, seed=2):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def engine(pipe, **settings):
    settings.setdefault("num_steps", 6)
    settings.setdefault("start_step", 2)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


@pytest.fixture(scope="module")
def inv(tiny_pipe):
    return engine(tiny_pipe).invert(_image())


@pytest.fixture
def family_inv(family_pipe):
    """The test image inverted with ``family_pipe`` (sd15 or sdxl)."""
    return engine(family_pipe).invert(_image())


def _pose(seed):
    """A pose-map-like image: a few bright limbs on black."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((64, 64, 3), np.uint8)
    for _ in range(4):
        y, x = rng.integers(4, 60, 2)
        canvas[y - 3 : y + 3, x - 10 : x + 10] = rng.integers(64, 255, 3)
    return Image.fromarray(canvas)


def test_all_ones_masks_give_the_unmasked_result(family_pipe, family_inv):
    ones = np.ones((64, 64), np.uint8) * 255
    masked = engine(family_pipe, mask=MaskConfig(source_mask=ones))
    frames = [FrameSpec("a cat standing", mask=ones), FrameSpec("a cat jumping", mask=ones)]
    got = masked.render(family_inv, SOURCE_PROMPT, frames, output_type="latent")
    want = engine(family_pipe).render(family_inv, SOURCE_PROMPT, ["a cat standing", "a cat jumping"], output_type="latent")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_partial_masks_change_the_frames(tiny_pipe, inv):
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    got = engine(tiny_pipe, mask=MaskConfig(source_mask=half)).render(
        inv, SOURCE_PROMPT, [FrameSpec("a cat standing", mask=half)], output_type="latent")
    plain = engine(tiny_pipe).render(inv, SOURCE_PROMPT, ["a cat standing"], output_type="latent")
    assert not torch.isnan(got).any()
    assert (got - plain).abs().max() > 1e-4


def test_empty_masks_fall_back_without_nan_and_say_so(family_pipe, family_inv, caplog):
    empty = np.zeros((64, 64), np.uint8)
    eng = engine(family_pipe, mask=MaskConfig(source_mask=empty))
    with caplog.at_level(logging.WARNING, logger="masactrl_engine"):
        got = eng.render(family_inv, SOURCE_PROMPT, [FrameSpec("a cat standing", mask=empty)], output_type="latent")
    plain = engine(family_pipe).render(family_inv, SOURCE_PROMPT, ["a cat standing"], output_type="latent")
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, plain, atol=1e-6, rtol=1e-6)
    assert "frame 0: source mask empty" in caplog.text and "plain mutual self-attention" in caplog.text


def test_automatic_masks_from_the_subject_word(tiny_pipe, inv):
    eng = engine(tiny_pipe, mask=MaskConfig(subject="cat", threshold=0.1))
    got = eng.render(inv, SOURCE_PROMPT, ["a cat standing", "a cat jumping"], output_type="latent")
    plain = engine(tiny_pipe).render(inv, SOURCE_PROMPT, ["a cat standing", "a cat jumping"], output_type="latent")
    assert not torch.isnan(got).any()
    assert (got - plain).abs().max() > 1e-4  # the masks did something
    branch = eng.source_branch(inv, SOURCE_PROMPT)
    assert branch.tokens == [5]  # <bos> a photo of a cat
    # maps recorded only at controlled steps, from the mask-level blocks (down 4, 5 and up 7, 8, 9)
    assert sorted(branch.maps) == [2, 3, 4, 5]
    assert [block for block, _ in branch.maps[2]] == [4, 5, 7, 8, 9]


def test_subject_lookup_handles_multi_token_words(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    assert len(tokenizer("kitten", add_special_tokens=False).input_ids) == 2
    assert subject_positions(tokenizer, "a fluffy kitten waving", "kitten") == [3, 4]
    assert subject_positions(tokenizer, "a cat and a kitten", "cat kitten") == [2, 5, 6]
    with pytest.raises(ValueError, match=r"the word 'dog' does not occur in the prompt 'a photo of a cat'"):
        subject_positions(tokenizer, "a photo of a cat", "dog")


def test_unknown_subject_is_refused_before_any_unet_call(tiny_pipe, inv):
    eng = engine(tiny_pipe, mask=MaskConfig(subject="cat"))
    with pytest.raises(ValueError, match=r"'cat' does not occur in the prompt 'a dog running'"):
        eng.render(inv, SOURCE_PROMPT, ["a cat standing", "a dog running"])
    assert eng.stats.source_calls == eng.stats.frame_calls == 0


@pytest.mark.parametrize("height, width", [(64, 96), (72, 64)])
def test_non_square_sizes_with_automatic_masks(family_pipe, height, width):
    eng = engine(family_pipe, mask=MaskConfig(subject="cat"))
    inv = eng.invert(_image(height, width))
    out = eng.render(inv, SOURCE_PROMPT, ["a cat standing"], output_type="np")
    assert out.shape == (1, height, width, 3) and not np.isnan(out).any()


def test_controlnet_scale_zero_equals_no_controlnet(family_pipe, family_inv):
    posed = engine(family_pipe, controlnet_scale=0.0).render(
        family_inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0))], output_type="latent")
    plain = engine(family_pipe).render(family_inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="latent")
    assert torch.equal(posed, plain)


def test_different_poses_give_different_frames_but_the_same_source(tiny_pipe, inv):
    first, second = engine(tiny_pipe), engine(tiny_pipe)
    a = first.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0))], output_type="latent")
    b = second.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(1))], output_type="latent")
    assert (a - b).abs().max() > 1e-3
    kv_a, kv_b = first.source_branch(inv, SOURCE_PROMPT).kv, second.source_branch(inv, SOURCE_PROMPT).kv
    assert kv_a.keys() == kv_b.keys()
    assert all(torch.equal(kv_a[key][0], kv_b[key][0]) and torch.equal(kv_a[key][1], kv_b[key][1]) for key in kv_a)
    # ControlNet ran for frame rows only: one CFG pair per frame per step.
    assert first.stats.controlnet_samples == 6 * 2


def test_mixed_batch_frames_without_pose_are_untouched(tiny_pipe, inv):
    mixed = engine(tiny_pipe).render(
        inv, SOURCE_PROMPT, [FrameSpec("a cat standing"), FrameSpec("a cat jumping", pose=_pose(3))], output_type="latent")
    alone = engine(tiny_pipe).render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="latent")
    torch.testing.assert_close(mixed[:1], alone, atol=1e-4, rtol=1e-4)


def test_controlnet_window_limits_the_steps(tiny_pipe, inv):
    eng = engine(tiny_pipe, controlnet_start=0.0, controlnet_end=0.5)
    eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0))], output_type="latent")
    assert eng.stats.controlnet_calls == 3  # steps 0, 1, 2 of 6


def test_pose_of_the_wrong_size_is_resized_with_a_log_line(tiny_pipe, inv, caplog):
    big = _pose(0).resize((128, 96))
    with caplog.at_level(logging.INFO, logger="masactrl_engine"):
        out = engine(tiny_pipe).render(inv, SOURCE_PROMPT, [FrameSpec("a cat", pose=big)], output_type="np")
    assert out.shape == (1, 64, 64, 3)
    assert "frames[0].pose: pose map is 128x96, resized to the output size 64x64" in caplog.text
