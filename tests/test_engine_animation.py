"""Animation controls on the tiny checkpoint: where frames start (inverted, noise, renoise), the
anchor frame (cross-frame attention), synthesis from a generation's own trajectory, and the
per-frame ControlNet scale. Costs are asserted exactly."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masactrl_engine import ControlConfig, EngineInputError, FrameSpec, MaskConfig, SequenceEngine

SOURCE_PROMPT = "a photo of a cat"
T, S = 6, 2
PROMPTS = ["a cat standing", "a cat jumping", "a dog sitting", "a cat running"]


def engine(pipe, **settings):
    settings.setdefault("num_steps", T)
    settings.setdefault("start_step", S)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


def _pose(seed):
    rng = np.random.default_rng(seed)
    canvas = np.zeros((64, 64, 3), np.uint8)
    for _ in range(4):
        y, x = rng.integers(4, 60, 2)
        canvas[y - 3 : y + 3, x - 10 : x + 10] = rng.integers(64, 255, 3)
    return Image.fromarray(canvas)


@pytest.fixture(scope="module")
def inv(tiny_pipe):
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return engine(tiny_pipe).invert(image)


class FrameInputs:
    """Records (sample, timestep) of every UNet call made while it is active."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(
            lambda module, args, kwargs: self.calls.append((args[0].clone(), int(args[1]))), with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------- frame start


def test_renoise_at_strength_one_is_the_inverted_start(tiny_pipe, inv):
    want = engine(tiny_pipe).render(inv, SOURCE_PROMPT, PROMPTS[:2], output_type="latent")
    got = engine(tiny_pipe, frame_start="renoise", strength=1.0).render(inv, SOURCE_PROMPT, PROMPTS[:2],
                                                                       output_type="latent")
    assert torch.equal(got, want)


@pytest.mark.parametrize("strength, k", [(0.5, 3), (0.4, 4), (0.9, 1)])
def test_renoise_runs_the_remaining_steps_from_the_inversion_level(tiny_pipe, inv, strength, k):
    eng = engine(tiny_pipe, frame_start="renoise", strength=strength)
    assert eng.config.first_step == k == round((1 - strength) * T)
    eng.source_branch(inv, SOURCE_PROMPT)  # the source branch is unchanged: T - S CFG pairs
    assert eng.stats.source_calls == T - S
    steps = []
    with FrameInputs(tiny_pipe.unet) as seen:
        out = eng.render(inv, SOURCE_PROMPT, PROMPTS[:3], batch_size=2, output_type="latent",
                         callback=lambda step, indices, z: steps.append((step, tuple(indices))))
    assert eng.stats.frame_calls == 2 * (T - k)  # two batches
    assert eng.stats.frame_samples == 3 * 2 * (T - k)  # exactly T - k CFG pairs per frame
    assert steps == [(i, (0, 1)) for i in range(k, T)] + [(i, (2,)) for i in range(k, T)]
    # The first k levels are skipped: the first call starts at step k, on the inversion latent of level T - k.
    first_sample, first_t = seen.calls[0]
    assert first_t == eng.ddim.timesteps[k]
    assert torch.equal(first_sample[0], inv.trajectory[T - k])
    assert [t for _, t in seen.calls[: T - k]] == list(eng.ddim.timesteps[k:])
    assert not torch.isnan(out).any()


def test_noise_start_is_shared_seeded_and_leaves_the_source_branch_alone(tiny_pipe, inv):
    noisy = engine(tiny_pipe, frame_start="noise", seed=3)
    frames = [FrameSpec("a cat standing", pose=_pose(1)), FrameSpec("a cat standing", pose=_pose(1)),
              FrameSpec("a cat standing", pose=_pose(1), seed=7)]
    with FrameInputs(tiny_pipe.unet) as seen:
        out = noisy.render(inv, SOURCE_PROMPT, frames, batch_size=1, output_type="latent")
    assert torch.equal(out[0], out[1])  # same prompt, pose and shared noise: the same frame
    assert (out[0] - out[2]).abs().max() > 1e-3  # its own seed, its own frame
    # The frames start from the seed's noise, drawn like generate's (CPU generator); the source
    # branch's T - S calls come first, then T calls per frame.
    starts = [seen.calls[T - S + j * T][0][0] for j in range(3)]
    shared = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(3))[0]
    own = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7))[0]
    assert torch.equal(starts[0], shared) and torch.equal(starts[1], shared) and torch.equal(starts[2], own)
    batched = engine(tiny_pipe, frame_start="noise", seed=3).render(inv, SOURCE_PROMPT, frames, batch_size=3,
                                                                     output_type="latent")
    torch.testing.assert_close(batched, out, atol=1e-4, rtol=1e-4)
    inverted = engine(tiny_pipe)
    plain = inverted.render(inv, SOURCE_PROMPT, frames[:1], output_type="latent")
    assert (plain[0] - out[0]).abs().max() > 1e-3
    kv_noise, kv_inv = noisy.source_branch(inv, SOURCE_PROMPT).kv, inverted.source_branch(inv, SOURCE_PROMPT).kv
    assert kv_noise.keys() == kv_inv.keys()
    assert all(torch.equal(kv_noise[key][0], kv_inv[key][0]) and torch.equal(kv_noise[key][1], kv_inv[key][1])
               for key in kv_inv)
    assert noisy.stats.frame_samples == 3 * 2 * T


# ---------------------------------------------------------------- anchor frame


@pytest.mark.parametrize("mask", [None, "cat"])
def test_anchor_frame_is_its_plain_render_and_changes_the_others(tiny_pipe, inv, mask):
    settings = dict(mask=MaskConfig(subject="cat")) if mask else {}
    prompts = ["a cat standing", "a cat jumping", "a cat running"]
    anchored = engine(tiny_pipe, cross_frame="anchor", anchor_frame=1, **settings)
    got = anchored.render(inv, SOURCE_PROMPT, prompts, batch_size=2, output_type="latent")
    alone = engine(tiny_pipe, **settings).render(inv, SOURCE_PROMPT, prompts[1:2], batch_size=1, output_type="latent")
    assert torch.equal(got[1], alone[0])
    plain = engine(tiny_pipe, **settings).render(inv, SOURCE_PROMPT, prompts, output_type="latent")
    assert (got[0] - plain[0]).abs().max() > 1e-4 and (got[2] - plain[2]).abs().max() > 1e-4
    assert not torch.isnan(got).any()
    if mask:
        branch = anchored._anchor
        assert sorted(branch.masks) == sorted(branch.kv)  # a mask for every recorded step and block
        assert all(m is not None and 0 < m.sum() < m.numel() for m in branch.masks.values())


def test_anchor_costs_are_exact_and_cached(tiny_pipe, inv):
    eng = engine(tiny_pipe, cross_frame="anchor", frame_start="renoise", strength=0.5)  # k = 3
    steps = T - 3
    eng.render(inv, SOURCE_PROMPT, PROMPTS, batch_size=2, output_type="latent")
    stats = eng.stats.as_dict()
    assert (stats["anchor_calls"], stats["anchor_samples"]) == (steps, 2 * steps)
    # frames 1..3 (the anchor, frame 0, comes from its cache): batches of 2 + 1
    assert (stats["frame_calls"], stats["frame_samples"]) == (2 * steps, 3 * 2 * steps)
    assert stats["source_calls"] == T - S
    # A chunk without the anchor frame: the anchor is passed explicitly and reused from the cache.
    eng.render(inv, SOURCE_PROMPT, PROMPTS[2:], output_type="latent", anchor=FrameSpec(PROMPTS[0]))
    assert eng.stats.anchor_calls == steps and eng.stats.frame_samples == 5 * 2 * steps
    # Another anchor is rendered (and counted) again.
    eng.render(inv, SOURCE_PROMPT, PROMPTS[2:], output_type="latent", anchor=FrameSpec(PROMPTS[1]))
    assert eng.stats.anchor_calls == 2 * steps


def test_anchor_cache_key_includes_the_pose_pixels(tiny_pipe, inv):
    eng = engine(tiny_pipe, cross_frame="anchor")
    first = eng.anchor_branch(inv, SOURCE_PROMPT, FrameSpec("a cat standing", pose=_pose(1)))
    assert eng.anchor_branch(inv, SOURCE_PROMPT, FrameSpec("a cat standing", pose=_pose(1))) is first
    other = eng.anchor_branch(inv, SOURCE_PROMPT, FrameSpec("a cat standing", pose=_pose(2)))
    assert other.key != first.key and eng.stats.anchor_calls == 2 * T


def test_anchored_frames_do_not_depend_on_batching(tiny_pipe, inv):
    eng = engine(tiny_pipe, cross_frame="anchor", anchor_weight=2.0)
    one = eng.render(inv, SOURCE_PROMPT, PROMPTS, batch_size=1, output_type="latent")
    four = eng.render(inv, SOURCE_PROMPT, PROMPTS, batch_size=4, output_type="latent")
    # two chunks, as the flow splits them: the second passes the anchor frame explicitly
    split = torch.cat([eng.render(inv, SOURCE_PROMPT, PROMPTS[:2], batch_size=2, output_type="latent"),
                       engine(tiny_pipe, cross_frame="anchor", anchor_weight=2.0).render(
                           inv, SOURCE_PROMPT, PROMPTS[2:], batch_size=2, output_type="latent",
                           anchor=FrameSpec(PROMPTS[0]))])
    torch.testing.assert_close(one, four, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one, split, atol=1e-4, rtol=1e-4)
    assert torch.equal(one[0], four[0])  # the anchor frame itself comes from the same cache


def test_anchor_weight_towards_zero_approaches_plain_masactrl(tiny_pipe, inv):
    plain = engine(tiny_pipe).render(inv, SOURCE_PROMPT, PROMPTS[:3], output_type="latent")
    faint = engine(tiny_pipe, cross_frame="anchor", anchor_weight=1e-6).render(inv, SOURCE_PROMPT, PROMPTS[:3],
                                                                             output_type="latent")
    full = engine(tiny_pipe, cross_frame="anchor").render(inv, SOURCE_PROMPT, PROMPTS[:3], output_type="latent")
    torch.testing.assert_close(faint, plain, atol=1e-4, rtol=1e-4)
    assert (full - plain).abs().max() > 10 * (faint - plain).abs().max()


# ---------------------------------------------------------------- synthesis


def test_synthesis_is_masactrls_published_synthesis_without_inversion(tiny_pipe):
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.published import PublishedSchedule

    prompt, frames = "a photo of a cat", ["a cat jumping", "a dog sitting"]
    eng = engine(tiny_pipe)
    inv = eng.synthesize(prompt, seed=4, height=64, width=64)
    got = eng.render(inv, prompt, frames, output_type="latent")
    assert eng.stats.inversion_calls == 0
    assert (eng.stats.generation_calls, eng.stats.generation_samples) == (T, 2 * T)
    start_code = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(4))
    assert torch.equal(inv.trajectory[T], start_code[0])
    reference = PublishedSchedule(tiny_pipe, T, 7.5, S, 10, source_correction=False)
    for i, frame in enumerate(frames):
        source, want = reference.synthesis(start_code, prompt, frame)
        # the same tolerance as the frames and the other faithfulness tests: batch composition and thread
        # count change the order of float sums
        torch.testing.assert_close(inv.trajectory[0], source, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)
    # The decoded source comes along, and it is what generate draws for the same prompt and seed.
    assert inv.image.size == (64, 64)
    assert np.array_equal(np.asarray(inv.image), np.asarray(eng.generate(prompt, seed=4, height=64, width=64)))


# ---------------------------------------------------------------- per-frame ControlNet scale


def test_per_frame_controlnet_scale(tiny_pipe, inv):
    eng = engine(tiny_pipe)
    off = eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0), controlnet_scale=0.0)],
                     output_type="latent")
    bare = engine(tiny_pipe).render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="latent")
    assert torch.equal(off, bare) and eng.stats.controlnet_calls == 0
    half = engine(tiny_pipe).render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0),
                                                                  controlnet_scale=0.5)], output_type="latent")
    half_config = engine(tiny_pipe, controlnet_scale=0.5).render(
        inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0))], output_type="latent")
    assert torch.equal(half, half_config)
    # An override brings a pose in even where the config's scale is 0.
    fading = engine(tiny_pipe, controlnet_scale=0.0)
    mixed = fading.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing", pose=_pose(0)),
                                               FrameSpec("a cat standing", pose=_pose(0), controlnet_scale=0.5)],
                          batch_size=2, output_type="latent")
    torch.testing.assert_close(mixed[0], bare[0], atol=1e-4, rtol=1e-4)  # its weight is 0 in a batch of two
    torch.testing.assert_close(mixed[1], half[0], atol=1e-4, rtol=1e-4)
    assert fading.stats.controlnet_samples == T * 2 * 2  # one batch of two frames with a ControlNet pass


# ---------------------------------------------------------------- refused combinations


@pytest.mark.parametrize("settings, message", [
    (dict(strength=0.0), r"strength: 0.0 must be in \(0, 1\]"),
    (dict(strength=1.5), r"strength: 1.5 must be in \(0, 1\]"),
    (dict(frame_start="renoise", strength=0.05), r"strength: 0.05 leaves no denoising step of num_steps=6"),
    (dict(seed="3"), r"seed: '3' must be a whole number"),
    (dict(seed=2.0), r"seed: 2.0 must be a whole number"),
    (dict(seed=True), r"seed: True must be a whole number"),
    (dict(frame_start="latent"), r"frame_start: 'latent' is not one of \('inverted', 'noise', 'renoise'\)"),
    (dict(cross_frame="all"), r"cross_frame: 'all' is not one of \('none', 'anchor'\)"),
    (dict(anchor_weight=0.0), r"anchor_weight: 0.0 must be a finite number > 0"),
    (dict(anchor_weight=-1), r"anchor_weight: -1 must be a finite number > 0"),
    (dict(anchor_frame=-1), r"anchor_frame: -1 must be a frame index >= 0"),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(EngineInputError, match=message):
        ControlConfig(num_steps=6, **settings)


def test_bad_frame_requests_are_refused_before_any_unet_call(tiny_pipe, inv):
    with pytest.raises(EngineInputError, match=r"frames\[\].seed: 1.5 must be a whole number"):
        FrameSpec("a cat", seed=1.5)
    with pytest.raises(EngineInputError, match=r"frames\[\].controlnet_scale: -1 must be a number >= 0"):
        FrameSpec("a cat", controlnet_scale=-1)
    eng = engine(tiny_pipe, cross_frame="anchor", anchor_frame=3)
    with pytest.raises(EngineInputError, match=r"anchor_frame: 3 is out of range for 2 frames"):
        eng.render(inv, SOURCE_PROMPT, PROMPTS[:2])
    with pytest.raises(EngineInputError, match=r"frames\[1\].seed: a frame's own seed only applies with "
                                               r"frame_start='noise'"):
        engine(tiny_pipe).render(inv, SOURCE_PROMPT, [FrameSpec("a cat"), FrameSpec("a cat", seed=2)])
    with pytest.raises(EngineInputError, match=r"anchor: given, but cross_frame='none'"):
        engine(tiny_pipe).render(inv, SOURCE_PROMPT, PROMPTS[:1], anchor=FrameSpec("a cat"))
    assert eng.stats.as_dict() == dict.fromkeys(eng.stats.as_dict(), 0)
