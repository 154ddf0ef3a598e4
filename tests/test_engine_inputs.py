"""Bad input gets one clear error naming the argument and the fix; the tiny checkpoint and loading."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from masactrl_engine import (
    ControlConfig,
    EngineInputError,
    FrameSpec,
    MaskConfig,
    SequenceEngine,
    load_pipeline,
)
from masactrl_engine.tiny import make_tiny_checkpoint


def engine(pipe, **settings):
    settings.setdefault("num_steps", 4)
    settings.setdefault("start_step", 1)
    return SequenceEngine(pipe, ControlConfig(**settings), progress=False)


def _image(h=64, w=64):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_non_image_sources_are_refused(tiny_pipe):
    eng = engine(tiny_pipe)
    with pytest.raises(EngineInputError, match=r"image: expected a PIL.Image .* got str; open files with PIL.Image.open"):
        eng.invert("cat.png")
    with pytest.raises(EngineInputError, match=r"image: array of shape \(4, 4, 4, 4\) is not an image"):
        eng.invert(np.zeros((4, 4, 4, 4)))
    assert eng.stats.inversion_calls == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=100), r"height: 100 is not allowed; use a multiple of 8 between 64 and 4096 \(e.g. 96\)"),
    (dict(width=32, height=64), r"width: 32 is not allowed"),
    (dict(height=8192, width=64), r"height: 8192 is not allowed"),
])
def test_sizes_that_are_not_allowed(tiny_pipe, kwargs, message):
    with pytest.raises(EngineInputError, match=message):
        engine(tiny_pipe).invert(_image(), **kwargs)


def test_image_of_an_odd_size_needs_a_target_size(tiny_pipe):
    eng = engine(tiny_pipe)
    with pytest.raises(EngineInputError, match="height: 300 is not allowed"):
        eng.invert(_image(300, 451))
    inv = eng.invert(_image(300, 451), height=64, width=96)
    assert (inv.height, inv.width) == (64, 96) and inv.trajectory.shape[2:] == (8, 12)


@pytest.mark.parametrize("settings, message", [
    (dict(num_steps=4, start_step=4), r"start_step: 4 must be in \[0, num_steps=4\)"),
    (dict(num_steps=0), r"num_steps: 0 must be a whole number >= 1"),
    (dict(guidance_scale=-1.0), r"guidance_scale: -1.0 must be a number >= 0"),
    (dict(controlnet_start=0.8, controlnet_end=0.2), r"controlnet_start/controlnet_end: need 0 <= start < end <= 1"),
])
def test_control_config_errors(settings, message):
    with pytest.raises(EngineInputError, match=message):
        ControlConfig(**settings)


def test_mask_config_errors():
    with pytest.raises(EngineInputError, match=r"mask.threshold: 1.5 is outside \(0, 1\)"):
        MaskConfig(subject="cat", threshold=1.5)
    with pytest.raises(EngineInputError, match="mask: give a subject word or a source_mask image"):
        MaskConfig()


def test_start_layer_beyond_the_unet(tiny_pipe):
    with pytest.raises(EngineInputError, match=r"start_layer: 16 must be below the UNet's 16 transformer blocks \(0..15\)"):
        engine(tiny_pipe, start_layer=16)


def test_render_argument_errors(tiny_pipe):
    eng = engine(tiny_pipe)
    inv = eng.invert(_image())
    with pytest.raises(EngineInputError, match="frames: the list is empty"):
        eng.render(inv, "a cat", [])
    with pytest.raises(EngineInputError, match=r"frames\[1\]: expected a FrameSpec or a prompt string, got int"):
        eng.render(inv, "a cat", ["a cat", 3])
    with pytest.raises(EngineInputError, match="batch_size: 0 must be a whole number >= 1"):
        eng.render(inv, "a cat", ["a cat"], batch_size=0)
    with pytest.raises(EngineInputError, match="output_type: 'gif' is not one of"):
        eng.render(inv, "a cat", ["a cat"], output_type="gif")
    with pytest.raises(EngineInputError, match=r"frames\[0\].pose: expected a PIL.Image"):
        eng.render(inv, "a cat", [FrameSpec("a cat", pose="pose.png")])
    with pytest.raises(EngineInputError, match="inv: expected an InvertedSource"):
        eng.render("inversion/", "a cat", ["a cat"])
    with pytest.raises(EngineInputError, match=r"frames\[0\].mask: needed because mask.subject is not set"):
        engine(tiny_pipe, mask=MaskConfig(source_mask=np.ones((64, 64)))).render(inv, "a cat", ["a cat"])
    assert eng.stats.source_calls == eng.stats.frame_calls == 0


def test_pose_without_controlnet_is_refused(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint, device="cpu")
    eng = engine(pipe)
    inv = eng.invert(_image())
    with pytest.raises(EngineInputError, match=r"frames\[0\].pose: the pipeline has no ControlNet; load it with"):
        eng.render(inv, "a cat", [FrameSpec("a cat", pose=np.zeros((64, 64, 3), np.uint8))])


def test_tiny_checkpoint_is_byte_identical_per_seed(tmp_path, tiny_checkpoint):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    again = make_tiny_checkpoint(tmp_path / "again", seed=0)
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    weights = [k for k in digest(again) if k.endswith(".safetensors")]
    assert len(weights) == 4  # unet, vae, text encoder, controlnet
    assert digest(again) == digest(tiny_checkpoint)
    assert all(digest(other)[k] != digest(again)[k] for k in weights)


def test_tiny_checkpoint_layout(tiny_checkpoint, tiny_pipe):
    scheduler = json.loads((tiny_checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert {k: scheduler[k] for k in ("beta_schedule", "beta_start", "beta_end", "steps_offset", "set_alpha_to_one",
                                      "clip_sample")} == {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                          "beta_end": 0.012, "steps_offset": 1,
                                                          "set_alpha_to_one": False, "clip_sample": False}
    unet = tiny_pipe.unet.config
    assert unet.layers_per_block == 2 and len(unet.down_block_types) == 4
    for word in ["cat", "person", "photo", "standing", "astronaut"]:
        assert len(tiny_pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tiny_pipe.tokenizer.model_max_length == 77
    assert type(tiny_pipe).__name__ == "StableDiffusionControlNetPipeline"


def test_tiny_checkpoint_never_overwrites_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(EngineInputError, match="exists and is not a tiny checkpoint"):
        make_tiny_checkpoint(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_load_pipeline_errors(tmp_path):
    with pytest.raises(EngineInputError, match="model: .* is not a folder"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(EngineInputError, match="holds no model_index.json"):
        load_pipeline(tmp_path)
