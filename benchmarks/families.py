"""Model-family benchmark: UNet samples and seconds per frame for SD 1.5, SDXL and SDXL-Turbo.

One job of N frames per family on the tiny checkpoints of each family (their real block layouts,
tiny channels), with each family's defaults: SD 1.5 and SDXL at T=50 under CFG (guidance 7.5),
SDXL-Turbo at T=4 without guidance (one UNet sample per frame per step, control from step 0).
The number that matters is UNet samples per frame: 2T = 100 under CFG against 4 for Turbo.
Samples are counted by the engine's ``EngineStats`` and checked against the formulas.

    python -m benchmarks.families --threads 1              # T as above, N=4
    python -m benchmarks.families --quick                  # what CI runs: T=2 (Turbo 1), N=2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import models
from .frames import SOURCE_PROMPT, frame_prompts, source_image
from .measure import machine_line

# family, label, steps, guidance, start step, start layer (the published starting points)
ROWS = (
    ("sd15", "tiny (SD 1.5 layout)", 50, 7.5, 4, 10),
    ("sdxl", "tiny-sdxl", 50, 7.5, 4, 44),
    ("sdxl-turbo", "tiny-sdxl-turbo", 4, 0.0, 0, 44),
)
QUICK_STEPS = {"sd15": 2, "sdxl": 2, "sdxl-turbo": 1}


@dataclass
class Row:
    model: str
    family: str
    blocks: int
    steps: int
    guidance_scale: float
    frames: int
    frame_samples_per_frame: float
    total_samples_per_frame: float
    published_samples_per_frame: int
    seconds_per_frame: float
    frames_seconds_per_frame: float


def checkpoint(family: str, cache: Path) -> Path:
    from masactrl_engine.tiny import make_tiny_checkpoint

    if family == "sd15":
        return models.tiny_checkpoint(cache)
    return make_tiny_checkpoint(Path(cache) / f"tiny-{family}", family=family)


def run(family: str, label: str, steps: int, guidance: float, start_step: int, start_layer: int, n: int,
        size: int, cache: Path) -> Row:
    from masactrl_engine import ControlConfig, SequenceEngine, load_pipeline

    pipe = load_pipeline(checkpoint(family, cache), device="cpu")
    config = ControlConfig(num_steps=steps, guidance_scale=guidance, start_step=start_step, start_layer=start_layer)
    engine = SequenceEngine(pipe, config, progress=False)
    image, prompts = source_image(size), frame_prompts(n)
    began = time.perf_counter()
    inv = engine.invert(image, "")
    engine.source_branch(inv, SOURCE_PROMPT)
    frames_began = time.perf_counter()
    engine.render(inv, SOURCE_PROMPT, prompts, batch_size=4, output_type="latent")
    ended = time.perf_counter()
    stats = engine.stats
    rows_per_sample = 2 if guidance > 1 else 1
    if stats.frame_samples != n * steps * rows_per_sample:
        raise RuntimeError(f"{label}: {stats.frame_samples} frame samples, the formula says {n * steps * rows_per_sample}")
    total = stats.inversion_samples + stats.source_samples + stats.frame_samples
    return Row(
        model=label, family=family, blocks=engine.num_blocks, steps=steps, guidance_scale=guidance, frames=n,
        frame_samples_per_frame=stats.frame_samples / n, total_samples_per_frame=total / n,
        # The published schedule per frame: T inversion steps (a CFG pair each) + T steps of [source, frame] x CFG.
        published_samples_per_frame=2 * steps + 4 * steps,
        seconds_per_frame=(ended - began) / n, frames_seconds_per_frame=(ended - frames_began) / n,
    )


def table(rows: list[Row]) -> str:
    header = (f"{'model':<22} {'blocks':>6} {'T':>3} {'guidance':>8} {'N':>3} {'samples/frame':>13} "
              f"{'incl. shared':>12} {'published':>9} {'s/frame':>8} {'frames s/frame':>14}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.model:<22} {r.blocks:>6} {r.steps:>3} {r.guidance_scale:>8.1f} {r.frames:>3} "
                     f"{r.frame_samples_per_frame:>13.0f} {r.total_samples_per_frame:>12.1f} "
                     f"{r.published_samples_per_frame:>9} {r.seconds_per_frame:>8.3f} {r.frames_seconds_per_frame:>14.3f}")
    base = next((r for r in rows if r.family == "sd15"), None)
    for r in rows:
        if base is not None and r is not base:
            lines.append(f"{r.model}: {r.frame_samples_per_frame:.0f} UNet samples per frame against "
                         f"{base.frame_samples_per_frame:.0f} for SD 1.5 at T={base.steps} "
                         f"({base.frame_samples_per_frame / r.frame_samples_per_frame:.1f}x fewer)")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--families", nargs="+", default=[row[0] for row in ROWS],
                        choices=[row[0] for row in ROWS])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true", help="T=2 (Turbo 1), N=2: seconds")
    parser.add_argument("--cache-dir", type=Path, default=models.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 2 if args.quick else args.frames
    rows = []
    for family, label, steps, guidance, start_step, start_layer in ROWS:
        if family not in args.families:
            continue
        if args.quick:
            steps, start_step = QUICK_STEPS[family], 0
        rows.append(run(family, label, steps, guidance, start_step, start_layer, n, args.size, args.cache_dir))
    print(f"# families: size={args.size}x{args.size} N={n} device=cpu dtype=float32\n# machine: {machine_line(torch.device('cpu'))}")
    print(table(rows), flush=True)
    result = [asdict(r) for r in rows]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
