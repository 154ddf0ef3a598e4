"""Frames benchmark: the same job rendered with the published MasaCtrl schedule and with the engine.

For each frame count N it renders N frames of one source image two ways, on the same model, in one
process, and prints a table:

- published: per frame, invert the source and denoise the ``[source, frame]`` pair under CFG
  (``benchmarks/published.py``);
- ours: ``SequenceEngine``: invert once, source branch once, frames in batches;
- floor: ``N * T`` CFG pairs, the frames part of "ours" (timed inside the same runs);
- renoise: "ours" with ``frame_start="renoise", strength=0.6``: frames run only the last
  ``T - k`` steps, ``k = round(0.4 T)``;
- anchor: "ours" with ``cross_frame="anchor"``: the anchor frame (frame 0) is rendered first,
  the other frames attend to the source and the anchor.

UNet calls and samples are counted exactly with a forward pre-hook (and checked against the
formulas and the engine's own ``EngineStats``); time per frame is the median over repeats (the
published schedule's repeats are its frames: each is an independent render); peak memory is the
working memory above the loaded weights (see ``benchmarks/measure.py``). Only latents are produced:
the VAE decode is one per frame in both schedules.

    python -m benchmarks.frames --quick                          # what CI runs, seconds
    python -m benchmarks.frames --model tiny --threads 1         # T=50, N=1,4,16: ~2 min on a CPU
    python -m benchmarks.frames --model sd15 --threads 1         # SD 1.5-sized, random weights, 256², T=4
    python -m benchmarks.frames --model sd15 --device cuda --size 512 --steps 50 --start-step 4 --frames 1 4 16
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import models
from .measure import Timer, UNetCounter, check_device, machine_line, measured, median, mib, parse_dtype, resident_bytes
from .published import INVERSION_MODES, PublishedSchedule

SOURCE_PROMPT = "a photo of a cat"
_VERBS = ["standing", "sitting", "jumping", "running", "walking", "waving", "dancing", "lying", "sleeping",
          "looking", "turning", "raising"]
_PLACES = ["street", "park", "room", "garden", "beach", "forest", "city", "grass", "snow", "water"]

# Per-model defaults: tiny runs the published defaults (T=50, S=4); the SD 1.5-sized model on a
# CPU uses few steps so the whole comparison stays within minutes.
DEFAULTS = {
    "tiny": dict(size=64, steps=50, start_step=4, frames=[1, 4, 16], repeats=3, published_frames=None),
    "sd15": dict(size=256, steps=4, start_step=1, frames=[1, 4, 8], repeats=1, published_frames=3),
}
QUICK = dict(size=64, steps=3, start_step=1, frames=[1, 3], repeats=1, published_frames=None, batch_size=2)
# The animation controls measured beside "ours" (ControlConfig settings on top of the job's).
RENOISE_STRENGTH = 0.6
VARIANTS = {"renoise": dict(frame_start="renoise", strength=RENOISE_STRENGTH), "anchor": dict(cross_frame="anchor")}


def frame_prompts(n: int) -> list[str]:
    """``n`` distinct prompts (every word a token of the tiny vocabulary too)."""
    prompts = [f"a cat {verb} in the {place}" for place in _PLACES for verb in _VERBS]
    if n > len(prompts):
        raise SystemExit(f"--frames: at most {len(prompts)} frames")
    return prompts[:n]


def source_image(size: int):
    """A real photo (scikit-image's bundled cat), centre-cropped and resized to ``size``."""
    from PIL import Image

    try:
        from skimage import data

        array = data.chelsea()
    except Exception:  # pragma: no cover - scikit-image is a dependency; noise keeps the bench running
        array = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(array[top : top + side, left : left + side])
    return crop.resize((size, size), Image.Resampling.BICUBIC)


@dataclass
class Settings:
    model: str
    size: int
    steps: int
    start_step: int
    start_layer: int
    guidance_scale: float
    batch_size: int
    frames: list[int]
    repeats: int
    published_frames: int
    published_inversion: str
    device: str
    dtype: str
    warmup: bool


def expected_counts(s: Settings, n: int) -> dict[str, int]:
    """The exact UNet/text-encoder costs the formulas predict (source correction on)."""
    T, S, B = s.steps, s.start_step, s.batch_size
    renoise_k = round((1 - RENOISE_STRENGTH) * T)
    inv_rows = 2 if s.published_inversion == "cfg" else 1
    return dict(
        published_calls=n * 2 * T,
        published_samples=n * (inv_rows * T + 4 * T),
        published_text_calls=n * (inv_rows + 2),
        ours_calls=T + (T - S) + math.ceil(n / B) * T,
        ours_samples=T + 2 * (T - S) + 2 * n * T,
        ours_text_calls=n + 2,  # "", the source prompt, each (distinct) frame prompt: once
        floor_calls=math.ceil(n / B) * T,
        floor_samples=2 * n * T,
        # renoise: the frames start at step k and run T - k steps; inversion and source branch unchanged
        renoise_calls=T + (T - S) + math.ceil(n / B) * (T - renoise_k),
        renoise_samples=T + 2 * (T - S) + 2 * n * (T - renoise_k),
        renoise_text_calls=n + 2,
        # anchor: frame 0 alone first (T CFG pairs), then the other N - 1 frames in batches
        anchor_calls=T + (T - S) + T + math.ceil((n - 1) / B) * T,
        anchor_samples=T + 2 * (T - S) + 2 * n * T,
        anchor_text_calls=n + 2,
    )


@dataclass
class Run:
    seconds: float
    peak_bytes: int | None
    calls: int
    samples: int
    text_calls: int
    phases: dict[str, float] = field(default_factory=dict)
    samples_by_phase: dict[str, int] = field(default_factory=dict)
    calls_by_phase: dict[str, int] = field(default_factory=dict)
    kv_bytes: int = 0


class Bench:
    def __init__(self, pipe, s: Settings):
        from masactrl_engine import ControlConfig

        self.pipe, self.s = pipe, s
        self.device = pipe.unet.device
        self.config = ControlConfig(num_steps=s.steps, guidance_scale=s.guidance_scale, start_step=s.start_step,
                                    start_layer=s.start_layer, source_correction=True)
        self.image = source_image(s.size)
        self.prompts = frame_prompts(max(s.frames))
        self.unet = UNetCounter(pipe.unet)
        self.text = UNetCounter(pipe.text_encoder)
        self.published = self._published(s.steps, s.start_step)
        self.published_latents: list[torch.Tensor] = []
        self.ours_latents: dict[int, torch.Tensor] = {}

    def _published(self, steps: int, start_step: int) -> PublishedSchedule:
        s = self.s
        schedule = PublishedSchedule(self.pipe, steps, s.guidance_scale, start_step, s.start_layer,
                                     source_correction=True, inversion=s.published_inversion)
        schedule.phase = self.unet.phase
        return schedule

    def close(self) -> None:
        self.unet.remove()
        self.text.remove()

    def _reset(self) -> None:
        self.unet.reset()
        self.text.reset()

    def warm_up(self) -> None:
        """One-step runs of both schedules at every batch shape the measured runs use."""
        from masactrl_engine import ControlConfig, SequenceEngine

        config = ControlConfig(num_steps=1, guidance_scale=self.s.guidance_scale, start_step=0,
                               start_layer=self.s.start_layer)
        engine = SequenceEngine(self.pipe, config, progress=False)
        inv = engine.invert(self.image, "")
        engine.render(inv, SOURCE_PROMPT, self.prompts[: min(self.s.batch_size, max(self.s.frames))],
                      batch_size=self.s.batch_size, output_type="latent")
        self._published(1, 0).frame(self.image, SOURCE_PROMPT, self.prompts[0])
        self._reset()

    def published_frame(self, index: int) -> Run:
        self._reset()
        timer = Timer(self.device)
        self.published.timer_phase = timer.phase
        with measured(self.device) as m:
            latent = self.published.frame(self.image, SOURCE_PROMPT, self.prompts[index])
        self.published_latents.append(latent.float().cpu())
        return Run(m.seconds, m.peak_bytes, self.unet.total_calls(), self.unet.total_samples(),
                   self.text.total_calls(), dict(timer.seconds), dict(self.unet.samples), dict(self.unet.calls))

    def ours(self, n: int, variant: str | None = None) -> Run:
        """The engine's job of ``n`` frames; ``variant`` names one of ``VARIANTS``."""
        from dataclasses import replace

        from masactrl_engine import SequenceEngine

        config = self.config if variant is None else replace(self.config, **VARIANTS[variant])
        self._reset()
        timer = Timer(self.device)
        with measured(self.device) as m:
            engine = SequenceEngine(self.pipe, config, progress=False)
            with timer.phase("inversion"), self.unet.phase("inversion"):
                inv = engine.invert(self.image, "")
            with timer.phase("source"), self.unet.phase("source"):
                branch = engine.source_branch(inv, SOURCE_PROMPT)
            with timer.phase("frames"), self.unet.phase("frames"):
                latents = engine.render(inv, SOURCE_PROMPT, self.prompts[:n], batch_size=self.s.batch_size,
                                        output_type="latent")
        stats = engine.stats
        engine_samples = stats.inversion_samples + stats.source_samples + stats.frame_samples + stats.anchor_samples
        if engine_samples != self.unet.total_samples():
            raise RuntimeError(f"EngineStats ({engine_samples}) and the hook ({self.unet.total_samples()}) disagree")
        kv = sum(t.numel() * t.element_size() for pair in branch.kv.values() for t in pair)
        if variant is None:
            self.ours_latents[n] = latents.float().cpu()
        run = Run(m.seconds, m.peak_bytes, self.unet.total_calls(), self.unet.total_samples(),
                  self.text.total_calls(), dict(timer.seconds), dict(self.unet.samples), dict(self.unet.calls), kv)
        del engine, branch, inv, latents
        gc.collect()
        return run


def _progress(message: str) -> None:
    print(f"[frames] {message}", file=sys.stderr, flush=True)


def run_model(pipe, s: Settings) -> dict:
    bench = Bench(pipe, s)
    try:
        if s.warmup:
            bench.warm_up()
            _progress("warmed up")
        resident = resident_bytes(bench.device)
        published: list[Run] = []
        ours: dict[int, list[Run]] = {n: [] for n in s.frames}
        variants: dict[str, dict[int, list[Run]]] = {v: {n: [] for n in s.frames} for v in VARIANTS}
        jobs = [n for _ in range(s.repeats) for n in s.frames]
        # Published frames spread evenly between the engine's jobs, so that a drifting machine load
        # (other processes on a shared machine) biases neither schedule.
        for j, n in enumerate(jobs):
            ours[n].append(bench.ours(n))
            _progress(f"ours N={n}: {ours[n][-1].seconds:.2f} s")
            for variant, runs in variants.items():
                runs[n].append(bench.ours(n, variant))
                _progress(f"{variant} N={n}: {runs[n][-1].seconds:.2f} s")
            while len(published) < round((j + 1) * s.published_frames / len(jobs)):
                published.append(bench.published_frame(len(published)))
                _progress(f"published frame {len(published)}: {published[-1].seconds:.2f} s")
        # Same job, same numbers: the published frames against the engine's (first frames of the largest job).
        largest = max(s.frames)
        k = min(len(bench.published_latents), largest)
        difference = float((torch.stack(bench.published_latents[:k]) - bench.ours_latents[largest][:k]).abs().max())
    finally:
        bench.close()
    return dict(published=published, ours=ours, variants=variants, difference=difference, compared_frames=k,
                resident=resident)


def _fmt_seconds(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def table(s: Settings, result: dict) -> tuple[str, list[dict]]:
    published: list[Run] = result["published"]
    per_frame = {(r.calls, r.samples, r.text_calls) for r in published}
    if len(per_frame) != 1:
        raise RuntimeError(f"published frames cost differently: {per_frame}")
    p_calls, p_samples, p_text = per_frame.pop()
    p_seconds = median([r.seconds for r in published])
    p_min = min(r.seconds for r in published)
    p_peak = max((r.peak_bytes for r in published if r.peak_bytes is not None), default=None)
    rows: list[dict] = []
    header = (f"{'N':>4}  {'schedule':<9} {'UNet calls':>10} {'UNet samples':>12} {'samples/frame':>13} "
              f"{'text-enc calls':>14} {'s/frame':>9} {'(min)':>9} {'peak MiB':>9}  {'published/this':>15}")
    lines = [header, "-" * len(header)]
    summaries = []
    for n in s.frames:
        runs = result["ours"][n]
        expected = expected_counts(s, n)
        o = runs[0]
        if any((r.calls, r.samples, r.text_calls) != (o.calls, o.samples, o.text_calls) for r in runs):
            raise RuntimeError("repeats of the same job cost differently")
        o_seconds = median([r.seconds / n for r in runs])
        f_seconds = median([r.phases["frames"] / n for r in runs])
        o_min = min(r.seconds / n for r in runs)
        f_min = min(r.phases["frames"] / n for r in runs)
        o_peak = max((r.peak_bytes for r in runs if r.peak_bytes is not None), default=None)
        entries = [
            ("published", n * p_calls, n * p_samples, n * p_text, p_seconds, p_min, p_peak),
            ("ours", o.calls, o.samples, o.text_calls, o_seconds, o_min, o_peak),
            ("floor", o.calls_by_phase.get("frames", 0), o.samples_by_phase.get("frames", 0), None, f_seconds, f_min,
             None),
        ]
        for variant, by_n in result["variants"].items():
            v_runs = by_n[n]
            v = v_runs[0]
            if any((r.calls, r.samples, r.text_calls) != (v.calls, v.samples, v.text_calls) for r in v_runs):
                raise RuntimeError(f"repeats of the same {variant} job cost differently")
            v_peak = max((r.peak_bytes for r in v_runs if r.peak_bytes is not None), default=None)
            entries.append((variant, v.calls, v.samples, v.text_calls, median([r.seconds / n for r in v_runs]),
                            min(r.seconds / n for r in v_runs), v_peak))
            for key, got in ((f"{variant}_calls", v.calls), (f"{variant}_samples", v.samples),
                             (f"{variant}_text_calls", v.text_calls)):
                if got != expected[key]:
                    raise RuntimeError(f"N={n}: {key} measured {got}, the formula says {expected[key]}")
        for name, calls, samples, text_calls, seconds, fastest, peak in entries:
            ratio = p_seconds / seconds
            sample_ratio = (n * p_samples) / samples
            lines.append(
                f"{n:>4}  {name:<9} {calls:>10} {samples:>12} {samples / n:>13.2f} "
                f"{'-' if text_calls is None else text_calls:>14} {_fmt_seconds(seconds):>9} {_fmt_seconds(fastest):>9} "
                f"{'-' if name == 'floor' else mib(peak):>9}  {ratio:>6.2f}x ({sample_ratio:.2f}x)"
            )
            rows.append(dict(model=s.model, frames=n, schedule=name, unet_calls=calls, unet_samples=samples,
                             samples_per_frame=samples / n, text_encoder_calls=text_calls, seconds_per_frame=seconds,
                             min_seconds_per_frame=fastest,
                             peak_mib=None if peak is None or name == "floor" else peak / 2**20,
                             time_ratio=ratio, sample_ratio=sample_ratio))
        for key, got in (("published_calls", n * p_calls), ("published_samples", n * p_samples),
                         ("published_text_calls", n * p_text), ("ours_calls", o.calls),
                         ("ours_samples", o.samples), ("ours_text_calls", o.text_calls),
                         ("floor_calls", o.calls_by_phase.get("frames", 0)),
                         ("floor_samples", o.samples_by_phase.get("frames", 0))):
            if got != expected[key]:
                raise RuntimeError(f"N={n}: {key} measured {got}, the formula says {expected[key]}")
        floor_samples = expected["floor_samples"]
        summaries.append(
            f"N={n}: published/ours per frame = {p_seconds / o_seconds:.2f}x in time (medians; "
            f"{p_min / o_min:.2f}x on the fastest runs), "
            f"{n * p_samples / o.samples:.2f}x in UNet samples; ours is above the floor "
            f"({floor_samples // n} samples/frame) by {100 * (o.samples / floor_samples - 1):.0f}% in samples, "
            f"{100 * (o_seconds / f_seconds - 1):.0f}% in time"
        )
    lines.append("")
    lines += summaries
    lines.append("")
    lines.append("breakdown, seconds (median over repeats) and the source branch's cached keys/values:")
    lines.append(f"  published, per frame: inversion {_fmt_seconds(median([r.phases['inversion'] for r in published]))}"
                 f" s, sampling {_fmt_seconds(median([r.phases['sampling'] for r in published]))} s")
    for n in s.frames:
        runs = result["ours"][n]
        lines.append(
            f"  ours N={n:<3}: inversion {_fmt_seconds(median([r.phases['inversion'] for r in runs]))} s, "
            f"source branch {_fmt_seconds(median([r.phases['source'] for r in runs]))} s, "
            f"frames {_fmt_seconds(median([r.phases['frames'] for r in runs]))} s; "
            f"K/V cache {runs[0].kv_bytes / 2**20:.1f} MiB"
        )
    lines.append(f"  max |ours - published| over the latents of {result['compared_frames']} frame(s): "
                 f"{result['difference']:.2e}")
    where = "allocated on the GPU" if s.device.startswith("cuda") else "resident (process RSS)"
    lines.append(f"  {where} before the jobs, model loaded and warmed up: {mib(result['resident'])} MiB")
    return "\n".join(lines), rows


def describe(s: Settings, pipe) -> str:
    opt = getattr(pipe, "masactrl_optimizations", None)
    inv = ("guidance 7.5, a CFG pair per step, as the published code" if s.published_inversion == "cfg"
           else "guidance 1, one sample per step")
    return "\n".join([
        f"# model={s.model} size={s.size}x{s.size} T={s.steps} S={s.start_step} L={s.start_layer} "
        f"guidance={s.guidance_scale} batch={s.batch_size} repeats={s.repeats} "
        f"published frames measured={s.published_frames} device={s.device} dtype={s.dtype}"
        + (f" {opt.describe()}" if opt else ""),
        f"# machine: {machine_line(torch.device(s.device))}",
        f"# published: per frame VAE encode + inversion ({inv}) + T steps of [source, frame] x CFG (4 samples)",
        "# ours: invert once (T x 1 sample) + source branch once (T-S CFG pairs) + frames in batches (N x T CFG pairs)",
        "# floor: N x T CFG pairs = the frames phase of ours, timed in the same runs",
        f"# renoise: ours with frame_start=renoise, strength={RENOISE_STRENGTH} (frames run T - round({1 - RENOISE_STRENGTH:.1f} T)"
        " steps); anchor: ours with cross_frame=anchor (frame 0 rendered first, T CFG pairs)",
        "# s/frame: median over repeats, (min): fastest repeat"
        " (the published schedule's repeats are its frames, each an independent render)\n"
        "# published/this: time ratio per frame of the medians (UNet-sample ratio); peak MiB: working memory above what"
        " was resident before the job",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frames", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=models.MODELS, nargs="+", default=["tiny"])
    parser.add_argument("--frames", type=int, nargs="+", help="frame counts N (default per model)")
    parser.add_argument("--steps", type=int, help="denoising steps T (default per model)")
    parser.add_argument("--start-step", type=int, help="MasaCtrl start step S (default per model)")
    parser.add_argument("--start-layer", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--size", type=int, help="image side in pixels (default per model)")
    parser.add_argument("--batch-size", type=int, help="frames per engine batch (default 4; 2 with --quick)")
    parser.add_argument("--repeats", type=int, help="repeats of each 'ours' job (default per model)")
    parser.add_argument("--published-frames", type=int,
                        help="frames actually rendered with the published schedule (default: all of the largest N); "
                             "its per-frame cost does not depend on N")
    parser.add_argument("--published-inversion", choices=INVERSION_MODES, default="cfg")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last UNet/VAE (default: on for CUDA, off for CPU)")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the UNet (see performance.py)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--cache-dir", type=Path, default=models.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="CI size: tiny model, T=3, N in (1, 3); seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.model = ["tiny"]
    return args


def settings_for(args, model: str) -> Settings:
    base = dict(DEFAULTS[model], batch_size=4)
    if args.quick:
        base.update(QUICK)
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else base[name]  # noqa: E731
    device = check_device(args.device)
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    frames = sorted(set(pick("frames")))
    published_frames = pick("published_frames") or max(frames)
    s = Settings(model=model, size=pick("size"), steps=pick("steps"), start_step=pick("start_step"),
                 start_layer=args.start_layer, guidance_scale=args.guidance_scale,
                 batch_size=pick("batch_size"),
                 frames=frames, repeats=pick("repeats"), published_frames=min(published_frames, max(frames)),
                 published_inversion=args.published_inversion, device=str(device), dtype=dtype, warmup=args.warmup)
    if not 0 <= s.start_step < s.steps:
        raise SystemExit(f"--start-step: {s.start_step} must be in [0, steps={s.steps})")
    if min(frames) < 1 or s.repeats < 1 or s.batch_size < 1:
        raise SystemExit("--frames, --repeats and --batch-size must be >= 1")
    return s


def main(argv=None) -> list[dict]:
    from masactrl_engine.performance import optimize_pipeline

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_rows: list[dict] = []
    for model in args.model:
        s = settings_for(args, model)
        pipe = models.load(model, s.device, parse_dtype(s.dtype), args.cache_dir)
        optimize_pipeline(pipe, channels_last=args.channels_last, compile=args.compile)
        print(describe(s, pipe), flush=True)
        result = run_model(pipe, s)
        text, rows = table(s, result)
        load = " load average at the end: %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
        print(text + f"\n#{load}\n", flush=True)
        for row in rows:
            row["settings"] = asdict(s)
        all_rows += rows
        del pipe
        gc.collect()
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))
    return all_rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
