"""The engine alone, no Prefect: invert a photo once, render a few frames, save PNGs.

    .venv/bin/python examples/engine_quickstart.py [--model PATH_OR_HUB_ID] [--out out/quickstart]

Without --model it writes and uses the tiny offline checkpoint (noise-like images; the point is
the mechanics). With a real SD 1.5 folder, use 512x512 and the default 50 steps.
"""

import argparse
from pathlib import Path

from PIL import Image
from skimage.data import chelsea

from masactrl_engine import ControlConfig, FrameSpec, MaskConfig, SequenceEngine, load_pipeline
from masactrl_engine.tiny import make_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="SD 1.x diffusers folder or hub id (default: the tiny checkpoint)")
    parser.add_argument("--size", type=int, default=None, help="square output side (default 64 tiny, 512 real)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 tiny, 50 real)")
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    args = parser.parse_args()

    tiny = args.model is None
    model = make_tiny_checkpoint(Path(".cache/tiny")) if tiny else args.model
    size = args.size or (64 if tiny else 512)
    steps = args.steps or (10 if tiny else 50)

    pipe = load_pipeline(model)
    engine = SequenceEngine(pipe, ControlConfig(num_steps=steps, start_step=min(4, steps - 1),
                                                mask=MaskConfig(subject="cat")))
    inv = engine.invert(Image.fromarray(chelsea()), prompt="", height=size, width=size)
    frames = [FrameSpec(p) for p in ("a cat sitting", "a cat standing", "a cat jumping", "a cat lying")]
    images = engine.render(inv, source_prompt="a photo of a cat", frames=frames, batch_size=4)

    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(args.out / f"frame_{i:03d}.png")
    print(f"wrote {len(images)} frames to {args.out}/; UNet calls: {engine.stats.as_dict()}")


if __name__ == "__main__":
    main()
