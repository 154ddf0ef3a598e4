"""Source branch benchmark: a sweep's cells sharing one source branch, against one branch per cell.

A sweep over frame-side settings (anchor weight x ControlNet scale) gives every cell its own
engine. Keyed by the whole config, as the worker cache did, each engine computed the source
branch again: 2(T-S) UNet samples per cell on top of the frames. Keyed by what the branch depends
on (``masactrl_engine.engine.SourceBranches`` shared by the engines of one pipeline), the first cell
computes it and the others reuse it.

Both ways run in one process on the same inversion, alternating cell by cell, and the table
prints UNet samples (counted by the engines' own EngineStats) and seconds per cell, and the ratio.

    python -m benchmarks.source_branch --quick      # what CI runs, seconds
    python -m benchmarks.source_branch              # tiny model, T=50, S=4, 4 frames per cell
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from PIL import Image

from . import models
from .frames import frame_prompts, source_image
from .measure import machine_line

WEIGHTS = (0.5, 1.0)
SCALES = (0.5, 1.0)


def run(size: int, steps: int, start_step: int, frames: int, threads: int) -> dict[str, dict[str, float]]:
    from masactrl_engine import ControlConfig, FrameSpec, SequenceEngine, load_pipeline
    from masactrl_engine.engine import SourceBranches

    torch.set_num_threads(threads)
    ckpt = models.tiny_checkpoint()
    pipe = load_pipeline(ckpt, controlnet=ckpt / "controlnet", device="cpu")
    base = dict(num_steps=steps, start_step=start_step, cross_frame="anchor")
    inv = SequenceEngine(pipe, ControlConfig(**base), progress=False).invert(source_image(size), height=size, width=size)
    pose = Image.new("RGB", (size, size))
    specs = [FrameSpec(p, pose=pose) for p in frame_prompts(frames)]
    shared = SourceBranches()
    totals = {way: {"samples": 0.0, "source_samples": 0.0, "seconds": 0.0, "cells": 0.0} for way in ("per-config", "shared")}
    for weight, scale in itertools.product(WEIGHTS, SCALES):
        config = ControlConfig(**base, anchor_weight=weight, controlnet_scale=scale)
        for way in totals:  # alternating, so that drift in the machine's speed hits both alike
            branches = shared if way == "shared" else SourceBranches()
            engine = SequenceEngine(pipe, config, progress=False, source_branches=branches)
            t0 = time.perf_counter()
            engine.render(inv, "a photo of a cat", specs, batch_size=frames, output_type="latent")
            row = totals[way]
            row["seconds"] += time.perf_counter() - t0
            stats = engine.stats.as_dict()
            row["samples"] += sum(v for k, v in stats.items() if k.endswith("_samples") and not k.startswith("controlnet"))
            row["source_samples"] += stats["source_samples"]
            row["cells"] += 1
    return totals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 64², T=3, S=1, 2 frames")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--start-step", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.start_step, args.frames = 64, 3, 1, 2
    totals = run(args.size, args.steps, args.start_step, args.frames, args.threads)
    print(machine_line(torch.device("cpu")))
    print(f"tiny model, {args.size}², T={args.steps}, S={args.start_step}, {args.frames} frames per cell, "
          f"{len(WEIGHTS) * len(SCALES)} cells (anchor_weight x controlnet_scale), {args.threads} thread(s)")
    print(f"{'keying':12} {'UNet samples/cell':>18} {'source samples/cell':>20} {'s/cell':>8}")
    for way, row in totals.items():
        n = row["cells"]
        print(f"{way:12} {row['samples'] / n:18.1f} {row['source_samples'] / n:20.1f} {row['seconds'] / n:8.3f}")
    a, b = totals["per-config"], totals["shared"]
    print(f"shared/per-config: UNet samples {b['samples'] / a['samples']:.3f}x, time {b['seconds'] / a['seconds']:.3f}x")


if __name__ == "__main__":
    main()
