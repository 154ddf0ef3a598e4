"""Invariants of the engine on the tiny checkpoint: identity, source correction, batching, cost,
DDIM equivalence with diffusers, inversion files."""

import numpy as np
import pytest
import torch
from PIL import Image

from masactrl_engine import ControlConfig, FrameSpec, InvertedSource, SequenceEngine
from masactrl_engine.ddim import DDIM

SOURCE_PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def engine(pipe, **settings):
    settings.setdefault("num_steps", 6)
    settings.setdefault("start_step", 2)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


@pytest.mark.parametrize("steps", [6, 50])
def test_ddim_matches_diffusers_schedulers(tiny_pipe, steps):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    ddim = DDIM.from_config(tiny_pipe.scheduler.config, steps)
    forward = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    forward.set_timesteps(steps)
    inverse = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    inverse.set_timesteps(steps)
    assert list(ddim.timesteps) == forward.timesteps.tolist()
    assert [ddim.inversion_timestep(k) for k in range(steps)] == inverse.timesteps.tolist()
    if steps == 50:
        assert ddim.timesteps[:2] == (981, 961) and ddim.timesteps[-1] == 1
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(forward.timesteps.tolist()):
        x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
        torch.testing.assert_close(ddim.denoise(eps, i, x), forward.step(eps, t, x).prev_sample, atol=1e-5, rtol=1e-5)
    for k, t in enumerate(inverse.timesteps.tolist()):
        x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
        torch.testing.assert_close(ddim.invert(eps, k, x), inverse.step(eps, t, x).prev_sample, atol=1e-5, rtol=1e-5)


def test_identity_frame_follows_source_branch(family_pipe, image):
    """Same prompt, no pose, control everywhere: the frame is the source branch, step by step."""
    eng = engine(family_pipe, start_step=0, start_layer=0, source_correction=False)
    inv = eng.invert(image)
    seen = {}
    eng.render(inv, SOURCE_PROMPT, [SOURCE_PROMPT], output_type="latent",
               callback=lambda step, indices, z: seen.__setitem__(step, z.clone()))
    branch = eng.source_branch(inv, SOURCE_PROMPT)
    assert sorted(seen) == list(range(6))
    for step in range(6):
        torch.testing.assert_close(seen[step][0], branch.latents[step], atol=1e-5, rtol=1e-5)


def test_source_correction_ends_on_the_encoded_source(family_pipe, image):
    eng = engine(family_pipe, source_correction=True)
    inv = eng.invert(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        encoded = family_pipe.vae.encode(pixels).latent_dist.mean * family_pipe.vae.config.scaling_factor
    branch = eng.source_branch(inv, SOURCE_PROMPT)
    assert torch.equal(branch.latents[-1], encoded[0])
    # ...and it follows the inversion trajectory backwards at every step.
    assert torch.equal(branch.latents, inv.trajectory.flip(0)[1:])
    # Without correction the free-running source drifts away from it (the test above can fail).
    drift = engine(family_pipe, source_correction=False).source_branch(inv, SOURCE_PROMPT).latents[-1]
    assert (drift - encoded[0]).abs().max() > 1e-3


def test_frames_do_not_depend_on_batching(family_pipe, image):
    eng = engine(family_pipe)
    inv = eng.invert(image)
    prompts = ["a cat standing", "a cat jumping", "a cat sitting", "a dog running"]
    one = eng.render(inv, SOURCE_PROMPT, prompts, batch_size=1, output_type="latent")
    four = eng.render(inv, SOURCE_PROMPT, prompts, batch_size=4, output_type="latent")
    split = torch.cat([eng.render(inv, SOURCE_PROMPT, prompts[:2], batch_size=2, output_type="latent"),
                       eng.render(inv, SOURCE_PROMPT, prompts[2:], batch_size=2, output_type="latent")])
    # Tolerance 1e-4 on latents of magnitude ~1: CPU float32 kernels sum in another order for
    # another batch size (seen: up to 4e-5 after 6 steps), nothing more.
    torch.testing.assert_close(one, four, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one, split, atol=1e-4, rtol=1e-4)
    assert (one[0] - one[1]).abs().max() > 1e-3  # different prompts, different frames


@pytest.mark.parametrize("correction, source_calls", [(True, 6 - 2), (False, 6)])
def test_cost_is_exactly_the_floor(family_pipe, image, correction, source_calls):
    eng = engine(family_pipe, source_correction=correction)
    inv = eng.invert(image)
    frames = ["a cat standing", "a cat jumping", "a dog sitting"]
    eng.render(inv, SOURCE_PROMPT, frames, batch_size=2, output_type="latent")
    stats = eng.stats.as_dict()
    assert stats["inversion_calls"] == 6 and stats["inversion_samples"] == 6  # one sample per step
    assert stats["source_calls"] == source_calls and stats["source_samples"] == 2 * source_calls
    assert stats["frame_calls"] == 2 * 6  # two batches (2 + 1 frames), T steps each
    assert stats["frame_samples"] == 3 * 6 * 2  # N * T CFG pairs
    assert stats["controlnet_calls"] == 0  # no poses, no ControlNet work
    # Rendering more frames on the same inversion (even loaded from disk) reuses the source branch.
    eng.render(InvertedSource.load(inv.save(_tmp()), device="cpu"), SOURCE_PROMPT, frames[:1], output_type="latent")
    assert eng.stats.source_calls == source_calls
    assert eng.stats.frame_samples == 4 * 6 * 2


def _tmp():
    import tempfile

    return tempfile.mkdtemp()


def test_inversion_round_trip_and_corruption(tiny_pipe, image, tmp_path):
    eng = engine(tiny_pipe)
    inv = eng.invert(image, prompt="a photo of a cat")
    folder = inv.save(tmp_path / "inv")
    assert sorted(p.name for p in folder.iterdir()) == ["inversion.json", "inversion.safetensors"]
    loaded = InvertedSource.load(folder)
    assert torch.equal(loaded.trajectory, inv.trajectory) and loaded.digest == inv.digest
    assert (loaded.prompt, loaded.height, loaded.width, loaded.timesteps) == ("a photo of a cat", 64, 64, inv.timesteps)
    meta = (folder / "inversion.json").read_text().replace(inv.digest, "0" * 32)
    (folder / "inversion.json").write_text(meta)
    with pytest.raises(ValueError, match="corrupt"):
        InvertedSource.load(folder)
    with pytest.raises(ValueError, match="inversion.safetensors is missing"):
        InvertedSource.load(tmp_path / "nowhere")


def test_inversion_for_other_step_count_is_refused(tiny_pipe, image):
    inv = engine(tiny_pipe, num_steps=4).invert(image)
    with pytest.raises(ValueError, match="num_steps=6; invert again"):
        engine(tiny_pipe).render(inv, SOURCE_PROMPT, ["a cat"])


def test_generate_is_deterministic_per_seed(tiny_pipe):
    eng = engine(tiny_pipe)
    a, b, c = (eng.generate("a photo of a cat", seed=s, height=64, width=96) for s in (1, 1, 2))
    assert a.size == (96, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    assert eng.stats.generation_calls == 18 and eng.stats.generation_samples == 36


def test_output_types(tiny_pipe, image):
    eng = engine(tiny_pipe)
    inv = eng.invert(image)
    pil = eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="pil")
    array = eng.render(inv, SOURCE_PROMPT, [FrameSpec("a cat standing")], output_type="np")
    assert pil[0].size == (64, 64) and array.shape == (1, 64, 64, 3)
    assert 0.0 <= array.min() and array.max() <= 1.0
    assert np.abs(np.asarray(pil[0], dtype=np.float32) - array[0] * 255).max() <= 0.5 + 1e-3
