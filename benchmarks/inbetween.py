"""What an in-between frame costs and how close it comes to the truth (flows/jobdir/inbetween.py).

    python -m benchmarks.inbetween --threads 1          # 512², SD 1.5-sized UNet for the comparison
    python -m benchmarks.inbetween --quick              # CI size: 128², the tiny UNet

Quality: known answers on real photos (scikit-image's astronaut, chelsea and coffee). A view of the
photo is panned by ``size / 16`` pixels, or zoomed from 1.0 to 1.2; the true middle view is
rendered from the photo itself (a zoom of 1.1: points move on straight lines at constant speed).
Printed: PSNR of the in-between at t = 0.5 against the truth, the same for the plain cross-fade
``(a + b) / 2``, and the margin.

Cost: seconds per in-between frame at the frame size, median over the photos' pairs, with k = 2
(one in-between per pair: both flows for one picture) and k = 4 (three per pair share the flows).
Against it: one UNet sample and one CFG pair at the same size (SD 1.5-sized with random weights,
or the tiny UNet with ``--quick``); a rendered frame costs T CFG pairs, i.e. 2T UNet samples
(T = 50 by default). The last lines print an in-between against one UNet sample and one frame.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from .measure import machine_line
from .metrics import build_unet, seconds, unet_seconds

PHOTOS = ("astronaut", "chelsea", "coffee")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def known_answers(name: str, size: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"pan": (first, true middle, last), "zoom": (...)} of one photo at ``size``²."""
    from skimage import data

    img = getattr(data, name)()
    width = 2 * size
    photo = cv2.resize(img, (width, round(width * img.shape[0] / img.shape[1])),
                       interpolation=cv2.INTER_AREA if width <= img.shape[1] else cv2.INTER_CUBIC)
    h, w = photo.shape[:2]

    def view(dx: float = 0.0, zoom: float = 1.0) -> np.ndarray:
        cx, cy = w / 2 + dx, h / 2
        m = np.array([[zoom, 0, size / 2 - zoom * cx], [0, zoom, size / 2 - zoom * cy]], np.float32)
        return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR)

    shift = size / 32  # each side: a pan of size/16 pixels in all
    return {"pan": (view(-shift), view(), view(shift)), "zoom": (view(zoom=1.0), view(zoom=1.1), view(zoom=1.2))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inbetween", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--steps", type=int, default=50, help="T: CFG pairs per rendered frame, for the ratio")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pair (the fastest counts)")
    parser.add_argument("--unet-repeats", type=int, default=2, help="timed UNet calls per batch size (after a warm-up)")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: theirs)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where --quick writes the tiny model")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="CI size: 128², the tiny UNet")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.unet_repeats = 128, 1, 1
    if args.size < 64 or args.size % 8:
        raise SystemExit("--size must be a multiple of 8, at least 64")
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    from flows.jobdir.inbetween import crossfade, interpolate, interpolate_pair

    print(f"# in-betweens at {args.size}x{args.size}; {machine_line(torch.device('cpu'))}", flush=True)
    quality: list[dict] = []
    k2, k4 = [], []
    print(f"{'photo':10} {'motion':6} {'in-between dB':>14} {'cross-fade dB':>14} {'margin dB':>10}")
    print("-" * 58)
    for name in PHOTOS:
        for motion, (first, truth, last) in known_answers(name, args.size).items():
            ours, fade = psnr(interpolate(first, last, 0.5), truth), psnr(crossfade(first, last, 0.5), truth)
            quality.append({"photo": name, "motion": motion, "inbetween_db": ours, "crossfade_db": fade})
            print(f"{name:10} {motion:6} {ours:14.2f} {fade:14.2f} {ours - fade:10.2f}", flush=True)
            k2.append(seconds(interpolate_pair, first, last, [0.5], repeats=args.repeats))
            k4.append(seconds(interpolate_pair, first, last, [0.25, 0.5, 0.75], repeats=args.repeats) / 3)

    rows: dict[str, float] = {"in-between (k=2)": statistics.median(k2), "in-between (k=4)": statistics.median(k4)}
    print(f"# UNet: building ({'tiny' if args.quick else 'SD 1.5-sized'}) ...", file=sys.stderr, flush=True)
    unet, unet_name = build_unet(args.quick, args.cache_dir)
    rows["unet sample"] = unet_seconds(unet, args.size, 1, args.unet_repeats)
    rows["unet cfg pair"] = unet_seconds(unet, args.size, 2, args.unet_repeats)
    rows[f"rendered frame (T={args.steps})"] = args.steps * rows["unet cfg pair"]

    print()
    print(f"# UNet: {unet_name}, latent {args.size // 8}x{args.size // 8}, fastest of {args.unet_repeats} call(s) "
          f"after a warm-up; a rendered frame = T CFG pairs = {2 * args.steps} UNet samples")
    print(f"{'what':30} {'seconds':>10}")
    print("-" * 41)
    for what, value in rows.items():
        print(f"{what:30} {value:10.4f}")
    ratios = {
        "in-between (k=2) / unet sample": rows["in-between (k=2)"] / rows["unet sample"],
        f"in-between (k=2) / rendered frame (T={args.steps})": rows["in-between (k=2)"] / rows[
            f"rendered frame (T={args.steps})"],
    }
    print()
    for what, value in ratios.items():
        print(f"ratio {what}: {value:.4f}x")
    result = {"size": args.size, "unet": unet_name, "quality": quality, "seconds": rows, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
