"""In-between frames: pictures between two rendered frames by bidirectional optical-flow warping.

Weight-free and deterministic (numpy and OpenCV only). For a time ``t`` in (0, 1) between
frames A (t = 0) and B (t = 1):

1. dense flow both ways with OpenCV DIS: ``F`` from A to B (A(x) ~ B(x + F(x))) and ``G`` back;
2. the flow from the in-between picture to each frame, assuming every point moves on a straight
   line at constant speed: a point at x at time t came from x0 in A with x0 + t F(x0) = x, so
   ``x0 = x - t F(x0)``, solved by a few fixed-point steps (exact for a pan, close for a zoom
   or any smooth motion); likewise ``x1 = x - (1 - t) G(x1)`` in B;
3. both frames warped to time t by sampling A at x0 and B at x1;
4. blended with weights ``(1 - t, t)``, adjusted for occlusion: a point whose flow is not undone
   by the flow back (forward-backward consistency, Sundaram et al. 2010, as the flicker metric
   uses) is taken to be hidden in the other frame, so the other frame's sample there shows what
   hides it and loses its weight; a sample that falls outside the picture counts for nothing.
   Where both frames see the point the plain ``(1 - t, t)`` weights remain.

Identical frames give that very frame back at every t. In-between frames are derived: they never
enter the frame cache, and ``ensure_inbetweens`` writes them under ``inbetweens/`` in the job
folder (names in ``flows.jobdir.layout``), stamped with the digests of the two frames they come
from, and computes them again when one is missing or its frames changed.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from flows.jobdir.frames_io import atomic_write
from flows.jobdir.layout import JobFolder

# Bump when the pictures this module makes change: in-betweens stamped otherwise are made again.
METHOD_VERSION = 1
STAMP_KEY = "masactrl-inbetween"
# Forward-backward consistency: |F + G(x + F)|^2 < ALPHA (|F|^2 + |G|^2) + BETA.
FB_ALPHA, FB_BETA = 0.01, 0.5
# A hidden point keeps this much of its weight, so a pixel hidden in both frames still blends.
HIDDEN_WEIGHT = 0.02
FIXED_POINT_STEPS = 4


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def dense_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) float32 from ``first`` to ``second`` (uint8 RGB): first(x) ~ second(x + F(x))."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(_gray(first), _gray(second), None)


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape[:2]
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image at the points (x, y), bilinear, the border repeated outside."""
    return cv2.remap(image, x, y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def consistency(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """1.0 where ``forward`` lands inside the picture and ``backward`` undoes it there, else 0.0."""
    gx, gy = _grid(forward.shape)
    tx, ty = gx + forward[..., 0], gy + forward[..., 1]
    back = _sample(np.ascontiguousarray(backward), tx, ty)
    loop = np.sum((forward + back) ** 2, axis=2)
    scale = np.sum(forward**2, axis=2) + np.sum(back**2, axis=2)
    h, w = forward.shape[:2]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (inside & (loop < FB_ALPHA * scale + FB_BETA)).astype(np.float32)


def _source_points(flow: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the point seen at x at fraction ``s`` of the way along ``flow`` started: the fixed
    point of ``p = x - s flow(p)``."""
    gx, gy = _grid(flow.shape)
    px, py = gx - s * flow[..., 0], gy - s * flow[..., 1]
    for _ in range(FIXED_POINT_STEPS):
        at = _sample(flow, px, py)
        px, py = gx - s * at[..., 0], gy - s * at[..., 1]
    return px, py


def _inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = x.shape
    return ((x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)).astype(np.float32)


@dataclass(frozen=True)
class PairFlows:
    """The flows of one frame pair both ways and how visible each frame's points are in the other."""

    forward: np.ndarray  # A -> B
    backward: np.ndarray  # B -> A
    visible_a: np.ndarray  # 1: the point of A is seen in B
    visible_b: np.ndarray


def pair_flows(a: np.ndarray, b: np.ndarray) -> PairFlows:
    fwd, bwd = dense_flow(a, b), dense_flow(b, a)
    return PairFlows(fwd, bwd, consistency(fwd, bwd), consistency(bwd, fwd))


def as_array(image: Image.Image | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what}: expected an 8-bit RGB picture, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def interpolate_pair(a: np.ndarray, b: np.ndarray, times: Sequence[float],
                     flows: PairFlows | None = None) -> list[np.ndarray]:
    """The pictures at each time in ``times`` (each in (0, 1)) between ``a`` (t = 0) and ``b``
    (t = 1), uint8 RGB of the same size. The flows are computed once for all times."""
    if a.shape != b.shape:
        raise ValueError(f"frames: {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]} differ in size; "
                         "in-between frames need two frames of one size")
    for t in times:
        if not 0.0 < t < 1.0:
            raise ValueError(f"t: {t} must lie strictly between 0 and 1")
    if np.array_equal(a, b):
        return [a.copy() for _ in times]  # nothing moves: the frame itself, exactly
    flows = flows or pair_flows(a, b)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    out = []
    for t in times:
        ax, ay = _source_points(flows.forward, t)
        bx, by = _source_points(flows.backward, 1.0 - t)
        from_a, from_b = _sample(fa, ax, ay), _sample(fb, bx, by)
        # A's point hidden in B: B's sample here is of whatever hides it, so A decides (and back).
        a_seen_in_b = _sample(flows.visible_a, ax, ay)
        b_seen_in_a = _sample(flows.visible_b, bx, by)
        wa = (1.0 - t) * (HIDDEN_WEIGHT + (1.0 - HIDDEN_WEIGHT) * b_seen_in_a) * _inside(ax, ay)
        wb = t * (HIDDEN_WEIGHT + (1.0 - HIDDEN_WEIGHT) * a_seen_in_b) * _inside(bx, by)
        # Both samples outside the picture: keep the plain weights rather than divide by zero.
        lost = (wa + wb) <= 0
        wa, wb = np.where(lost, 1.0 - t, wa), np.where(lost, t, wb)
        blend = (wa[..., None] * from_a + wb[..., None] * from_b) / (wa + wb)[..., None]
        out.append(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
    return out


def interpolate(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, t: float) -> np.ndarray:
    """One in-between picture at time ``t`` (0 < t < 1) from ``a`` to ``b``."""
    return interpolate_pair(as_array(a, "first frame"), as_array(b, "second frame"), [t])[0]


def crossfade(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, t: float) -> np.ndarray:
    """The plain cross-fade ``(1 - t) a + t b``: what in-betweens must beat."""
    fa, fb = as_array(a, "first frame").astype(np.float32), as_array(b, "second frame").astype(np.float32)
    return np.clip(np.rint((1.0 - t) * fa + t * fb), 0, 255).astype(np.uint8)


def steps(k: int) -> list[float]:
    """The k - 1 times between two frames shown k frames apart: 1/k, 2/k, ... (k - 1)/k."""
    if k < 1:
        raise ValueError(f"interpolate: {k} must be >= 1")
    return [s / k for s in range(1, k)]


# --------------------------------------------------------------------------- in-betweens on disk


def _stamp(first: bytes, second: bytes, step: int, k: int) -> str:
    """What an in-between file was made from: the method, both frames' bytes, its place."""
    h = hashlib.sha256()
    for part in (f"v{METHOD_VERSION}:{step}/{k}:".encode(), hashlib.sha256(first).digest(),
                 hashlib.sha256(second).digest()):
        h.update(part)
    return h.hexdigest()


def _stamped(path: Path, stamp: str) -> np.ndarray | None:
    """The picture at ``path`` when it carries ``stamp``; None when missing, unreadable or stale."""
    try:
        with Image.open(path) as im:
            if getattr(im, "text", {}).get(STAMP_KEY) != stamp:
                return None
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _write_stamped(picture: np.ndarray, path: Path, stamp: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(STAMP_KEY, stamp)
    return atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG", pnginfo=info))


def ensure_inbetweens(job_dir: str | os.PathLike, pairs: Sequence[tuple[int, int]], k: int,
                      frame_bytes: dict[int, bytes]) -> dict[tuple[int, int], list[Path]]:
    """The k - 1 in-between files of each frame pair (first, second) of a job folder, in time
    order, made where missing or stale. ``frame_bytes``: each frame index's PNG bytes (already
    verified by the caller). A pair is stored once in either direction: (b, a) reuses the files
    of (a, b), in reverse order, when those are there."""
    folder = JobFolder(job_dir)
    out: dict[tuple[int, int], list[Path]] = {}
    for first, second in pairs:
        if (second, first) in out:
            out[(first, second)] = out[(second, first)][::-1]
            continue
        paths = [folder.inbetween(first, second, s, k) for s in range(1, k)]
        stamps = [_stamp(frame_bytes[first], frame_bytes[second], s, k) for s in range(1, k)]
        missing = [s for s, (p, st) in enumerate(zip(paths, stamps)) if _stamped(p, st) is None]
        if missing:
            a = np.asarray(_decode(frame_bytes[first]))
            b = np.asarray(_decode(frame_bytes[second]))
            pictures = interpolate_pair(a, b, [(s + 1) / k for s in missing])
            for s, picture in zip(missing, pictures):
                _write_stamped(picture, paths[s], stamps[s])
        out[(first, second)] = paths
    return out


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


__all__ = ["METHOD_VERSION", "PairFlows", "consistency", "crossfade", "dense_flow", "ensure_inbetweens",
           "interpolate", "interpolate_pair", "pair_flows", "steps"]
