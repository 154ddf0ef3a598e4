"""Long and weighted prompts through compel on the tiny checkpoints: chunks of 77 tokens, weights,
SDXL's pooled embedding from the first chunk, the subject word past token 77, negative prompts."""

import pytest
import torch

from masactrl_engine import EngineInputError, FrameSpec, MaskConfig
from masactrl_engine.conditioning import CHUNK, PromptEncoder, parse_prompt

from tests.test_prompt_travel import SOURCE_PROMPT, _image, engine  # the same engine and source picture
# 5 + 114 tokens with the tiny (CLIP-style) tokenizer; one more word makes 120: two chunks.
LONG = "a photo of a cat " + "walking " * 114


def encoder(pipe) -> PromptEncoder:
    return PromptEncoder(pipe, torch.device("cpu"), torch.float32)


def test_long_prompt_is_120_tokens(tiny_pipe):
    assert len(tiny_pipe.tokenizer(LONG + "red", verbose=False).input_ids) - 2 == 120


def test_weight_one_is_the_plain_prompt(family_pipe):
    text = encoder(family_pipe)
    plain = text.embed("a photo of a cat")
    for spelled in ("a photo of a (cat)1.0", "a photo of a (cat:1.0)", "a (photo of a cat)1.0"):
        got = text.embed(spelled)
        assert torch.equal(got.hidden, plain.hidden), spelled
        assert got.pooled is None or torch.equal(got.pooled, plain.pooled)


def test_long_prompts_whose_ends_differ_give_different_frames(tiny_pipe):
    red, blue = LONG + "red", LONG + "blue"
    text = encoder(tiny_pipe)
    # What the plain encoder (one window, the tail cut) made of them: the same conditioning.
    assert torch.equal(text._encode_plain(red).hidden, text._encode_plain(blue).hidden)
    a, b = text.embed(red), text.embed(blue)
    assert a.hidden.shape[1] == 2 * CHUNK
    # The first chunk is the cut prompt's window; the difference lives in the second chunk.
    assert torch.equal(a.hidden[:, :CHUNK], b.hidden[:, :CHUNK])
    assert not torch.allclose(a.hidden[:, CHUNK:], b.hidden[:, CHUNK:])
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    frames = eng.render(inv, SOURCE_PROMPT, [red, blue], output_type="latent")
    assert (frames[0] - frames[1]).abs().max() > 1e-4


def test_a_frame_renders_the_same_beside_a_longer_one(tiny_pipe):
    """Frames of different lengths are batched apart: no frame is padded for another's sake."""
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    alone = eng.render(inv, SOURCE_PROMPT, ["a cat standing"], output_type="latent")
    mixed = eng.render(inv, SOURCE_PROMPT, ["a cat standing", LONG + "red"], batch_size=2, output_type="latent")
    torch.testing.assert_close(mixed[:1], alone, atol=1e-5, rtol=1e-5)


def test_subject_after_token_77_guides_the_masks(tiny_pipe):
    late = "a photo of a dog " + "walking " * 80 + "cat"
    eng = engine(tiny_pipe, mask=MaskConfig(subject="cat"))
    ids = eng.text.token_ids(late)
    [position] = eng._subject_positions(late)
    assert position > CHUNK and ids[position] == tiny_pipe.tokenizer("cat", add_special_tokens=False).input_ids[0]
    inv = eng.invert(_image())
    got = eng.render(inv, SOURCE_PROMPT, [late], output_type="latent")
    assert torch.isfinite(got).all()
    # still refused when the word is nowhere in the prompt
    with pytest.raises(EngineInputError, match="'cat' does not occur"):
        eng.render(inv, SOURCE_PROMPT, ["a photo of a dog " + "walking " * 80], output_type="latent")


def test_weights_move_the_conditioning_the_expected_way(family_pipe):
    text = encoder(family_pipe)
    ids = text.token_ids("a photo of a (cat)1.5")
    cat = [i for i, t in enumerate(ids) if t == family_pipe.tokenizer("cat", add_special_tokens=False).input_ids[0]]
    plain = text.embed("a photo of a cat").hidden
    empty = text.embed("").hidden
    up = text.embed("a photo of a (cat)1.5").hidden
    # up-weighting scales the word's tokens away from the empty prompt by the weight, others stay
    torch.testing.assert_close(up[:, cat] - empty[:, cat], 1.5 * (plain[:, cat] - empty[:, cat]), atol=1e-5, rtol=1e-5)
    others = [i for i in range(plain.shape[1]) if i not in cat]
    assert torch.equal(up[:, others], plain[:, others])
    # down-weighting moves the prompt towards the prompt without the word, the more the lower
    gone = text.embed("a photo of a (cat)0.0").hidden
    distances = [(text.embed(f"a photo of a (cat){w}").hidden - gone).norm().item() for w in (1.0, 0.7, 0.4)]
    assert distances[0] > distances[1] > distances[2] > 0, distances


def test_sdxl_pooled_comes_from_the_first_chunk(tiny_family_pipe):
    pipe = tiny_family_pipe("sdxl")
    text = encoder(pipe)
    long = text.embed(LONG + "red")
    assert long.hidden.shape[1] == 2 * CHUNK
    ids, _, _ = text._providers[1].get_token_ids_and_expand_weights(*parse_prompt(LONG + "red"), device="cpu")
    with torch.no_grad():
        first = pipe.text_encoder_2(ids[None, :CHUNK])[0]
    torch.testing.assert_close(long.pooled, first)
    assert torch.equal(long.pooled, text.embed(LONG + "blue").pooled)  # the tail reaches the tokens only
    # weights and their syntax do not reach the pooled embedding (A1111), the tokens they do
    assert torch.equal(text.embed("a photo of a (cat)1.3").pooled, text.embed("a photo of a cat").pooled)


def test_long_negative_prompts_pad_the_batch(family_pipe):
    text = encoder(family_pipe)
    negative = "blurry, " * 60  # 120 tokens: two chunks
    rows = text.rows(["a cat", LONG + "red"], negative, guided=True)
    assert rows.hidden.shape[:2] == (4, 2 * CHUNK)
    torch.testing.assert_close(rows.hidden[0], text.embed(negative).hidden[0])
    # a short prompt is padded with chunks of the empty prompt's encoding
    torch.testing.assert_close(rows.hidden[2, CHUNK:], text.embed("").hidden[0])
    eng = engine(family_pipe, negative_prompt=negative)
    inv = eng.invert(_image())
    got = eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="latent")
    assert torch.isfinite(got).all()


def test_operators_the_engine_cannot_run_are_refused_before_any_work(tiny_pipe):
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    before = eng.stats.frame_calls
    with pytest.raises(EngineInputError, match=r"frames\[1\]\.prompt: .*swap"):
        eng.render(inv, SOURCE_PROMPT, ["a cat", "a cat.swap(dog)"], output_type="latent")
    assert eng.stats.frame_calls == before and eng.stats.source_calls == 0
