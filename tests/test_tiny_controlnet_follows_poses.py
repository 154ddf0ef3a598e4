"""The tiny ControlNet of every family responds to *which* pose it gets, where the pose differs.

Before, its random kernels and biases washed thin limbs out: two walk poses gave frame latents that
differed by rel 2.6e-5, float noise level, so the pose demo stood still. Here two poses that differ
only in the right arm must give frames that differ far above float noise, and the difference must sit
around that arm.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from masactrl_engine import ControlConfig, FrameSpec, SequenceEngine
from pose_sources import Person, Pose

SIZE = 128
SOURCE_PROMPT = "a photo of a cat"
PROMPT = "a cat standing"
# Float noise of a rendered frame across CPUs, thread counts and kernels (relative L2 of the latents),
# measured for tests/test_engine_defaults.py: at most 1.4e-5. A real response must be 100x that.
FLOAT_NOISE = 1.4e-5
# Body points of a standing figure on a 128x128 canvas, COCO-18 order (x, y); the right arm is 3-4.
STANDING = [(64, 22), (64, 38), (50, 38), (44, 58), (40, 76), (78, 38), (84, 58), (88, 76),
            (56, 76), (54, 98), (54, 120), (72, 76), (74, 98), (74, 120),
            (61, 19), (67, 19), (58, 21), (70, 21)]  # fmt: skip
RIGHT_ARM = (3, 4)  # elbow, wrist


def _pose(raise_arm: bool) -> Pose:
    body = np.array([(x, y, 1.0) for x, y in STANDING])
    if raise_arm:  # elbow out to the side, wrist above the shoulder
        body[3, :2] = (30, 32)
        body[4, :2] = (26, 10)
    return Pose((Person(body),), (SIZE, SIZE))


def _moved_arm_region(a: Image.Image, b: Image.Image, dilation: int) -> np.ndarray:
    """Pixels within `dilation` of where the two pose maps differ (the old and the new arm)."""
    differ = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).sum(-1) > 0
    return ndimage.binary_dilation(differ, iterations=dilation)


def _energy_inside(diff: np.ndarray, region: np.ndarray) -> float:
    energy = diff**2
    return float(energy[region].sum() / energy.sum())


def _source() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))


# Every family in the demo's frame start; the published start on SD 1.5 too.
@pytest.mark.parametrize("family, frame_start", [("sd15", "noise"), ("sd15", "inverted"), ("sd2", "noise"),
                                                 ("sdxl", "noise"), ("sdxl-turbo", "noise")])
def test_a_moved_arm_changes_the_frame_around_that_arm(tiny_family_pipe, family, frame_start):
    pipe = tiny_family_pipe(family)
    guidance = 0.0 if family == "sdxl-turbo" else 7.5
    config = ControlConfig(num_steps=6, start_step=2, guidance_scale=guidance, frame_start=frame_start)
    engine = SequenceEngine(pipe, config, progress=False)
    inv = engine.invert(_source())
    down, up = _pose(False).render(), _pose(True).render()
    frames = [FrameSpec(PROMPT, pose=down), FrameSpec(PROMPT, pose=up)]
    latents = engine.render(inv, SOURCE_PROMPT, frames, batch_size=2, output_type="latent")
    alone = engine.render(inv, SOURCE_PROMPT, frames[:1], batch_size=1, output_type="latent")

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    noise = max(FLOAT_NOISE, rel(alone[0], latents[0]))  # batch composition is float noise too
    response = rel(latents[1], latents[0])
    assert response >= 100 * noise, f"{family}: frames differ by rel {response:.2g}, float noise {noise:.2g}"

    # Most of the difference energy lies around the arm, in latents (1/8 of the side) and pixels.
    region = _moved_arm_region(down, up, dilation=SIZE // 16)
    diff = (latents[1] - latents[0]).pow(2).sum(0).sqrt().numpy()
    latent_region = np.asarray(Image.fromarray(region).resize(diff.shape[::-1], Image.BOX)) > 0
    inside = _energy_inside(diff, latent_region)
    assert inside > 0.5 and inside > 2 * latent_region.mean(), (
        f"{family}: {inside:.0%} of the latent difference lies around the arm, which covers "
        f"{latent_region.mean():.0%} of the frame")

    pixels = engine.decode(latents).double()
    pixel_diff = (pixels[1] - pixels[0]).abs().mean(0).numpy()
    inside = _energy_inside(pixel_diff, region)
    assert inside > 2 * region.mean(), (
        f"{family}: {inside:.0%} of the pixel difference lies around the arm, which covers {region.mean():.0%}")
