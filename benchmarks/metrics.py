"""What the quality metrics cost (flows/quality/), next to one UNet sample of the model.

    python -m benchmarks.metrics --threads 1            # 16 frames of 512², SD 1.5-sized UNet
    python -m benchmarks.metrics --quick                # CI size: 4 frames of 128², the tiny UNet

Frames: the scikit-image astronaut (bundled, 512²), moved a few pixels per frame with a small
brightness flicker, so the optical flow has real work to do. Measured, median over the frames or
pairs: the flow warp error of one pair (DIS forward + backward, consistency, warp), the appearance
distance of one frame (Lab histograms), the same with a subject mask (adds background SSIM), PSNR,
and ``compute_job_metrics`` end to end on a job folder of those frames (PNG reads included).

UNet: one forward call at the frames' latent size (size/8) with batch 1 (one sample) and batch 2
(one CFG pair), random weights with SD 1.5's UNet configuration (``benchmarks.models.SD15_UNET``;
speed depends on the shapes, not the values), or the tiny UNet with ``--quick``. A frame costs T
CFG pairs (T = 50 by default): the last lines print the metrics of one frame against one UNet
sample and against one frame's render (T pairs) on the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .measure import machine_line


def make_frames(n: int, size: int) -> list[np.ndarray]:
    from skimage import data
    from skimage.transform import resize

    pad = 4 * n
    base = data.astronaut()
    big = (resize(base, (size + pad, size + pad), anti_aliasing=True) * 255).astype(np.uint8)
    frames = []
    for k in range(n):
        crop = big[pad // 2 : pad // 2 + size, 2 * k : 2 * k + size].astype(np.int16)
        frames.append(np.clip(crop + (3 if k % 2 else -3), 0, 255).astype(np.uint8))
    return frames


def write_job(folder: Path, frames: list[np.ndarray]) -> Path:
    """A finished job folder as the animate flow leaves it (frames, result.json, source, decode, mask)."""
    from PIL import Image

    from flows.jobdir.frames_io import write_json_atomic

    job_dir, inversion = folder / "job", folder / "inversion"
    (job_dir / "frames").mkdir(parents=True)
    (job_dir / "masks").mkdir()
    inversion.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(job_dir / "frames" / f"frame_{i:04d}.png")
    Image.fromarray(frames[0]).save(inversion / "source.png")
    Image.fromarray(np.clip(frames[0].astype(int) + 2, 0, 255).astype(np.uint8)).save(job_dir / "source_decode.png")
    h, w = frames[0].shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[h // 8 :, w // 4 : 3 * w // 4] = 255
    Image.fromarray(mask).save(job_dir / "masks" / "source.png")
    write_json_atomic(job_dir / "result.json", {"job_hash": "bench", "frame_count": len(frames),
                                                "inversion_dir": str(inversion), "outputs": {}})
    return job_dir


def seconds(fn, *args, repeats: int = 1) -> float:
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best.append(time.perf_counter() - start)
    return min(best)


def build_unet(quick: bool, cache: Path | None):
    from diffusers import UNet2DConditionModel

    if quick:
        from .models import DEFAULT_CACHE, tiny_checkpoint

        return UNet2DConditionModel.from_pretrained(tiny_checkpoint(cache or DEFAULT_CACHE) / "unet"), "tiny"
    from .models import SD15_UNET

    return UNet2DConditionModel(**SD15_UNET), "sd15 (random weights)"


def unet_seconds(unet, size: int, batch: int, repeats: int) -> float:
    latent = size // 8
    sample = torch.randn(batch, unet.config.in_channels, latent, latent)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500] * batch)
    unet.eval()
    with torch.inference_mode():
        unet(sample, t, encoder_hidden_states=text)  # warm-up
        return seconds(lambda: unet(sample, t, encoder_hidden_states=text), repeats=repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--steps", type=int, default=50, help="T: CFG pairs per rendered frame, for the ratio")
    parser.add_argument("--unet-repeats", type=int, default=2, help="timed UNet calls per batch size (after a warm-up)")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: theirs)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where --quick writes the tiny model")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="CI size: 4 frames of 128², the tiny UNet")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.unet_repeats = 4, 128, 1
    if args.frames < 2 or args.size < 64 or args.size % 8:
        raise SystemExit("--frames must be at least 2 and --size a multiple of 8, at least 64")
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    from flows import quality

    frames = make_frames(args.frames, args.size)
    h, w = frames[0].shape[:2]
    mask = np.zeros((h, w), bool)
    mask[h // 8 :, w // 4 : 3 * w // 4] = True
    print(f"# metrics on {args.frames} frames of {args.size}x{args.size}; {machine_line(torch.device('cpu'))}", flush=True)

    rows: dict[str, float] = {}
    pair = [seconds(quality.pair_flicker, frames[k], frames[k + 1]) for k in range(len(frames) - 1)]
    rows["flicker per pair"] = statistics.median(pair)
    rows["appearance per frame"] = statistics.median(seconds(quality.appearance, frames[0], f) for f in frames)
    rows["appearance+ssim per frame"] = statistics.median(
        seconds(quality.appearance, frames[0], f, mask) for f in frames)
    rows["psnr per job"] = seconds(quality.psnr, frames[0], frames[1])
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        job_dir = write_job(Path(tmp), frames)
        total = seconds(lambda: quality.write_metrics(job_dir, quality.compute_job_metrics(job_dir, detector=None)))
    rows["job metrics per job"] = total
    rows["job metrics per frame"] = total / len(frames)

    print(f"# UNet: building ({'tiny' if args.quick else 'SD 1.5-sized'}) ...", file=sys.stderr, flush=True)
    unet, name = build_unet(args.quick, args.cache_dir)
    rows["unet sample"] = unet_seconds(unet, args.size, 1, args.unet_repeats)
    rows["unet cfg pair"] = unet_seconds(unet, args.size, 2, args.unet_repeats)
    frame_render = args.steps * rows["unet cfg pair"]

    print(f"# UNet: {name}, latent {args.size // 8}x{args.size // 8}, fastest of {args.unet_repeats} call(s) after a warm-up")
    print(f"{'what':30} {'seconds':>10}")
    print("-" * 41)
    for what, value in rows.items():
        print(f"{what:30} {value:10.4f}")
    per_frame = rows["job metrics per frame"]
    ratios = {
        "metrics per frame / unet sample": per_frame / rows["unet sample"],
        f"metrics per frame / frame render (T={args.steps})": per_frame / frame_render,
    }
    print()
    for what, value in ratios.items():
        print(f"ratio {what}: {value:.4f}x")
    result = {"frames": args.frames, "size": args.size, "unet": name, "seconds": rows, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
