"""``masactrl_engine.performance.optimize_pipeline``: opt-in channels-last and regional
``torch.compile`` change how the UNet runs, never what the engine computes."""

import numpy as np
import pytest
import torch
from PIL import Image

from masactrl_engine import ControlConfig, SequenceEngine, load_pipeline
from masactrl_engine.performance import COMPILED_REGIONS, optimize_pipeline

PROMPTS = ["a cat standing", "a cat jumping"]


@pytest.fixture()
def fresh_pipe(tiny_checkpoint):
    """A pipeline of its own: optimize_pipeline modifies it in place."""
    return load_pipeline(tiny_checkpoint, device="cpu")


def _frames(pipe):
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    engine = SequenceEngine(pipe, ControlConfig(num_steps=3, start_step=1), progress=False)
    return engine.render(engine.invert(image), "a photo of a cat", PROMPTS, batch_size=2, output_type="latent")


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_defaults_on_cpu_change_nothing(fresh_pipe):
    optimize_pipeline(fresh_pipe)
    assert fresh_pipe.masactrl_optimizations.describe() == "channels_last=off compile=off"
    assert all(w.is_contiguous() for w in _conv_weights(fresh_pipe.unet))


def test_channels_last_same_frames(fresh_pipe, tiny_pipe):
    want = _frames(tiny_pipe)
    optimize_pipeline(fresh_pipe, channels_last=True)
    assert fresh_pipe.masactrl_optimizations.channels_last == ["unet", "vae"]
    for model in (fresh_pipe.unet, fresh_pipe.vae):
        weights = [w for w in _conv_weights(model) if w.shape[-1] > 1 or w.shape[-2] > 1]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    torch.testing.assert_close(_frames(fresh_pipe), want, atol=1e-4, rtol=1e-4)


def test_compile_regions_same_frames(fresh_pipe, tiny_pipe):
    """Regional compile survives the engine's processor swaps; dynamo traces with the eager
    backend here (inductor's code generation takes minutes on a small CPU)."""
    want = _frames(tiny_pipe)
    regions = sum(type(m).__name__ in COMPILED_REGIONS for m in fresh_pipe.unet.modules())
    optimize_pipeline(fresh_pipe, compile=True, backend="eager")
    assert fresh_pipe.masactrl_optimizations.compiled == {"unet": regions} and regions > 20
    assert torch._dynamo.config.recompile_limit >= 2 * regions
    torch.testing.assert_close(_frames(fresh_pipe), want, atol=1e-4, rtol=1e-4)
    # Applying it twice compiles nothing new.
    optimize_pipeline(fresh_pipe, compile=True, backend="eager")
    assert fresh_pipe.masactrl_optimizations.compiled == {"unet": 0}


def test_needs_a_pipeline_with_a_unet():
    with pytest.raises(ValueError, match=r"\.unet"):
        optimize_pipeline(object())
