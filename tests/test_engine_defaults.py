"""Default settings reproduce the frames of the engine as it was before the animation controls
(issue 10) bit for bit.

``tests/data/engine_defaults.safetensors`` holds the latents that ``render(..., output_type="latent")``
produced for the cases below with the code of commit 5e6ae78 (before frame starts, anchors and
synthesis existed), on this project's CPU test machine (float32). Regenerate it only on purpose,
with the code whose frames you want to pin:

    HF_HUB_OFFLINE=1 .venv/bin/python tests/test_engine_defaults.py

The comparison is ``torch.equal``: any change to the default computation, even a reordering of
float operations, fails here. A different tiny checkpoint (``masactrl_engine/tiny``) or a
different CPU kernel library changes the bits too; the failure message says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DATA = Path(__file__).parent / "data" / "engine_defaults.safetensors"
SOURCE_PROMPT = "a photo of a cat"


def _image():
    return Image.fromarray(np.random.default_rng(11).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _pose():
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[10:16, 20:44] = (255, 0, 85)
    canvas[16:50, 29:35] = (0, 255, 170)
    canvas[50:56, 14:50] = (85, 0, 255)
    return Image.fromarray(canvas)


def _half(left: bool):
    mask = np.zeros((64, 64), np.uint8)
    if left:
        mask[:, :32] = 255
    else:
        mask[8:56, 8:56] = 255
    return mask


def cases():
    """name -> (ControlConfig settings, frames, batch_size)."""
    from masactrl_engine import FrameSpec, MaskConfig

    pose = _pose()
    return {
        "prompts": (dict(), ["a cat standing", "a dog jumping", "a cat sitting"], 2),
        "no_correction": (dict(source_correction=False), ["a cat standing", "a dog jumping"], 2),
        "pose": (dict(controlnet_scale=0.8, controlnet_end=0.75),
                 [FrameSpec("a cat standing", pose=pose), FrameSpec("a cat jumping")], 2),
        "mask_auto": (dict(mask=MaskConfig(subject="cat")), ["a cat standing", "a cat jumping"], 2),
        "mask_explicit": (dict(mask=MaskConfig(source_mask=_half(True))),
                          [FrameSpec("a cat standing", mask=_half(False)), FrameSpec("a cat jumping", mask=_half(True))],
                          1),
    }


def render_cases(pipe) -> dict[str, torch.Tensor]:
    from masactrl_engine import ControlConfig, SequenceEngine

    out = {}
    inv = None
    for name, (settings, frames, batch_size) in cases().items():
        config = ControlConfig(num_steps=4, start_step=1, **settings)
        engine = SequenceEngine(pipe, config, progress=False)
        if inv is None:
            inv = engine.invert(_image())
            out["inversion"] = inv.trajectory.contiguous()
        out[name] = engine.render(inv, SOURCE_PROMPT, frames, batch_size=batch_size, output_type="latent").contiguous()
    return out


# The thread count decides how CPU kernels split their sums, so bit-exactness needs the count the
# fixture was made with (torch's default on the 2-core machines it was made on).
FIXTURE_THREADS = 2


def test_defaults_reproduce_the_frames_of_before_the_animation_controls(tiny_pipe):
    from safetensors.torch import load_file

    want = load_file(DATA)
    torch.set_num_threads(FIXTURE_THREADS)  # the conftest restores the count afterwards
    got = render_cases(tiny_pipe)
    assert sorted(got) == sorted(want)
    assert torch.equal(got["inversion"], want["inversion"]), (
        "the inversion itself differs: the tiny checkpoint or the CPU kernels changed, not only the engine; "
        "regenerate tests/data/engine_defaults.safetensors from the pinned commit on this machine")
    for name in sorted(cases()):
        assert torch.equal(got[name], want[name]), f"{name}: max |diff| {(got[name] - want[name]).abs().max():.3g}"


if __name__ == "__main__":
    import tempfile

    from safetensors.torch import save_file

    from masactrl_engine import load_pipeline
    from masactrl_engine.tiny import make_tiny_checkpoint

    folder = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
    torch.set_num_threads(FIXTURE_THREADS)
    tensors = render_cases(load_pipeline(folder, controlnet=folder / "controlnet", device="cpu"))
    DATA.parent.mkdir(exist_ok=True)
    save_file(tensors, DATA)
    print({name: tuple(t.shape) for name, t in tensors.items()}, file=sys.stderr)
