"""Prompt keyframes: conditioning interpolated between two prompts (linear, slerp, hold), in the
engine (FrameSpec's prompt_to/travel) and in jobs (frames.prompts as {frame: prompt})."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from flows.job.model import AnimationJob, JobInputError
from flows.job.plan import plan_job
from flows.job.sweep_axes import parse_axes, parse_grid
from masactrl_engine import ControlConfig, EngineInputError, FrameSpec, MaskConfig, SequenceEngine

SOURCE_PROMPT = "a photo of a cat"
A, B = "a cat sitting", "a dog jumping"


def _image(seed=2):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def engine(pipe, **settings):
    settings.setdefault("num_steps", 4)
    settings.setdefault("start_step", 1)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


# ---------------------------------------------------------------- engine


def test_keyframes_get_exactly_their_own_prompts_conditioning(family_pipe):
    text = engine(family_pipe).text
    a, b = text.embed(A), text.embed(B)
    for mode in ("linear", "slerp", "hold"):
        start, end = text.travel(A, B, 0.0, mode), text.travel(A, B, 1.0, mode)
        assert torch.equal(start.hidden, a.hidden) and torch.equal(end.hidden, b.hidden), mode
        assert a.pooled is None or torch.equal(start.pooled, a.pooled) and torch.equal(end.pooled, b.pooled)


def test_keyframe_frames_equal_plain_prompt_frames_bit_for_bit(tiny_pipe):
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    plain = eng.render(inv, SOURCE_PROMPT, [A, B], batch_size=2, output_type="latent")
    keyed = eng.render(inv, SOURCE_PROMPT, [FrameSpec(A, prompt_to=B, travel=0.0),
                                            FrameSpec(A, prompt_to=B, travel=1.0, interpolation="slerp")],
                       batch_size=2, output_type="latent")
    assert torch.equal(plain, keyed)


def _slerp_formula(a, b, t):
    """sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b per token vector; equal vectors (the tokens two
    prompts share before they differ, under a causal encoder) are themselves."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True))
    theta = torch.arccos(cos.clamp(-1, 1))
    same = theta < 1e-4
    sin = torch.where(same, torch.ones_like(theta), torch.sin(theta))
    return torch.where(same, (1 - t) * a + t * b, (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin)


def test_midpoint_conditioning_is_the_formula(family_pipe):
    text = engine(family_pipe).text
    a, b = text.embed(A), text.embed(B)
    linear, slerp, hold = (text.travel(A, B, 0.5, mode) for mode in ("linear", "slerp", "hold"))
    torch.testing.assert_close(linear.hidden, (a.hidden + b.hidden) / 2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(slerp.hidden.double(), _slerp_formula(a.hidden, b.hidden, 0.5), atol=1e-5, rtol=1e-5)
    assert torch.equal(hold.hidden, a.hidden)
    if a.pooled is not None:  # SDXL: the pooled embeddings travel too
        torch.testing.assert_close(linear.pooled, (a.pooled + b.pooled) / 2, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(slerp.pooled.double(), _slerp_formula(a.pooled, b.pooled, 0.5), atol=1e-5, rtol=1e-5)
        assert torch.equal(hold.pooled, a.pooled)
    # slerp differs from linear away from the keyframes (the token vectors are not parallel)
    assert not torch.allclose(slerp.hidden, linear.hidden, atol=1e-5)


def test_travel_between_a_short_and_a_long_prompt_pads_the_short_one(tiny_pipe):
    text = engine(tiny_pipe).text
    long = "a dog " + "jumping " * 100
    mid = text.travel(A, long, 0.25)
    a = text.embed(A)
    padded = torch.cat([a.hidden, text.embed("").hidden], dim=1)
    torch.testing.assert_close(mid.hidden, 0.75 * padded + 0.25 * text.embed(long).hidden, atol=1e-6, rtol=1e-6)


def test_frames_move_away_from_the_first_keyframe_along_the_travel(tiny_pipe):
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    frames = eng.render(inv, SOURCE_PROMPT, [FrameSpec(A, prompt_to=B, travel=t) for t in ts], output_type="latent")
    to_first = [(f - frames[0]).norm().item() for f in frames]
    to_last = [(f - frames[-1]).norm().item() for f in frames]
    assert all(x < y for x, y in zip(to_first, to_first[1:])), to_first
    assert all(x > y for x, y in zip(to_last, to_last[1:])), to_last


def test_mask_guidance_reads_the_nearer_keyframe(tiny_pipe):
    eng = engine(tiny_pipe, mask=MaskConfig(subject="cat"))
    near_a = FrameSpec("a cat sitting", prompt_to="a photo of a big cat", travel=0.25)
    near_b = FrameSpec("a cat sitting", prompt_to="a photo of a big cat", travel=0.75)
    assert near_a.nearer_prompt == "a cat sitting" and near_b.nearer_prompt == "a photo of a big cat"
    plan = eng._plan_masks([near_a, near_b], SOURCE_PROMPT, lambda i: f"frames[{i}]")
    assert plan.frame_tokens == [eng._subject_positions("a cat sitting"), eng._subject_positions("a photo of a big cat")]
    assert plan.frame_tokens[0] != plan.frame_tokens[1]
    inv = eng.invert(_image())
    assert torch.isfinite(eng.render(inv, SOURCE_PROMPT, [near_a, near_b], output_type="latent")).all()
    with pytest.raises(EngineInputError, match="'cat' does not occur in the prompt 'a dog jumping'"):
        eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat sitting", prompt_to="a dog jumping", travel=0.75)])


def test_frame_spec_refuses_bad_travel():
    with pytest.raises(EngineInputError, match=r"travel: 1.5 must be a number in \[0, 1\]"):
        FrameSpec(A, prompt_to=B, travel=1.5)
    with pytest.raises(EngineInputError, match="interpolation: 'cubic'"):
        FrameSpec(A, prompt_to=B, travel=0.5, interpolation="cubic")


# ---------------------------------------------------------------- jobs


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def job(image, tmp_path, prompts, **frames):
    return AnimationJob.model_validate({
        "source": {"image": str(image), "prompt": SOURCE_PROMPT},
        "frames": {"prompts": prompts, **frames},
        "model": {"model": "tiny"},
        "settings": {"width": 64, "height": 64, "steps": 4, "start_step": 1},
        "output": {"folder": str(tmp_path / "out")},
    })


def test_keyframes_in_yaml_give_each_frame_its_travel(image, tmp_path):
    data = yaml.safe_load('prompts: {0: "a cat sitting", 4: "a cat standing", 6: "a cat jumping"}')
    spec = job(image, tmp_path, data["prompts"]).frames
    assert spec.prompt_travel(None, SOURCE_PROMPT) == [
        ("a cat sitting", None, None), ("a cat sitting", "a cat standing", 0.25),
        ("a cat sitting", "a cat standing", 0.5), ("a cat sitting", "a cat standing", 0.75),
        ("a cat standing", None, None), ("a cat standing", "a cat jumping", 0.5), ("a cat jumping", None, None)]
    # the form sends the frame numbers as strings
    assert job(image, tmp_path, {"0": "a cat sitting", "2": "a cat jumping"}).frames.prompts == {
        0: "a cat sitting", 2: "a cat jumping"}
    held = job(image, tmp_path, {0: "a cat sitting", 2: "a cat jumping"}, prompt_interpolation="hold").frames
    assert held.prompt_travel(None, SOURCE_PROMPT) == [("a cat sitting", None, None)] * 2 + [
        ("a cat jumping", None, None)]
    # with poses: frames before the first keyframe and after the last hold their prompts
    late = job(image, tmp_path, {1: "a cat sitting", 2: "a cat jumping"}).frames
    assert [p for p, _, _ in late.prompt_travel(5, SOURCE_PROMPT)] == ["a cat sitting"] * 2 + ["a cat jumping"] * 3
    with pytest.raises(JobInputError, match=r"frames\.prompts\[7\]: keyframe 7 is past the last of the 5 poses"):
        job(image, tmp_path, {0: "a cat sitting", 7: "a cat jumping"}).frames.prompt_travel(5, SOURCE_PROMPT)


def test_subject_missing_from_a_keyframe_names_it(image, tmp_path):
    with pytest.raises(ValidationError, match=r"'cat' does not occur in frames\.prompts\[12\]"):
        AnimationJob.model_validate({
            "source": {"image": str(image), "prompt": SOURCE_PROMPT, "subject": "cat"},
            "frames": {"prompts": {0: "a cat sitting", 12: "a dog standing"}},
            "model": {"model": "tiny"}, "output": {"folder": str(tmp_path / "out")}})


def test_frame_keys_follow_the_interpolated_conditioning(image, tmp_path):
    keyed = {mode: plan_job(job(image, tmp_path, {0: A, 4: B}, prompt_interpolation=mode), write=False).frames
             for mode in ("linear", "slerp", "hold")}
    plain = plan_job(job(image, tmp_path, [A, A, A, A, B]), write=False).frames
    keys = {mode: [f.key for f in frames] for mode, frames in keyed.items()}
    assert all(keys[mode] for mode in keys) and None not in keys["linear"]
    for mode in keys:  # keyframe frames are plain prompt frames, with their keys
        assert keys[mode][0] == plain[0].key and keys[mode][4] == plain[4].key, mode
    assert keys["hold"] == [f.key for f in plain]  # hold: the earlier keyframe's prompt, nothing else
    assert len(set(keys["linear"][1:4])) == 3 and plain[0].key not in keys["linear"][1:4]
    assert keys["linear"][1:4] != keys["slerp"][1:4]
    mid = keyed["slerp"][2]
    assert (mid.prompt, mid.prompt_to, mid.travel, mid.interpolation) == (A, B, 0.5, "slerp")
    # an override's own prompt replaces the travel at its frame
    over = plan_job(job(image, tmp_path, {0: A, 4: B}, overrides=[{"index": 2, "prompt": "a cat"}]), write=False)
    assert over.frames[2].prompt_to is None and over.frames[2].prompt == "a cat"


def test_prompt_interpolation_is_in_the_schema_and_sweeps(image, tmp_path):
    frames = AnimationJob.model_json_schema()["$defs"]["FramesSpec"]["properties"]
    assert frames["prompt_interpolation"]["enum"] == ["linear", "slerp", "hold"]
    assert {m["type"] for m in frames["prompts"]["anyOf"]} == {"array", "object"}
    spec = parse_axes(None, ["frames.prompt_interpolation=linear,slerp"], AnimationJob)
    assert [(a.key, a.values) for a in spec.axes] == [("frames.prompt_interpolation", ["linear", "slerp"])]
    assert parse_grid(["frames.prompt_interpolation=linear,slerp"]) == {
        "frames.prompt_interpolation": ["linear", "slerp"]}
    with pytest.raises(Exception, match="prompt_interpolation"):
        parse_axes(None, ["frames.prompt_interpolation=linear,cubic"], AnimationJob)
