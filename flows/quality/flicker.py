"""Flicker between consecutive frames: optical-flow warp error next to the plain frame difference.

Dense optical flow (OpenCV DIS) runs from frame i to i+1 and back; frame i+1 is warped onto
frame i and the mean absolute difference is taken over the pixels whose flow is forward-backward
consistent and whose target lies inside the picture. The consistency test is Sundaram et al.
2010's, also used by Ruder et al. for video style transfer:
``|F + B(x+F)|^2 < 0.01 (|F|^2 + |B|^2) + 0.5``. Motion that the flow explains costs nothing;
flicker, popping textures and colour jumps do. When no pixel is consistent (the two frames share
nothing), every in-bounds pixel counts. The **frame difference** beside it is the plain mean
absolute difference without any warping: large for any motion, so read the two side by side.
All in 0-255 on 8-bit RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flows.quality.pictures import ImageLike, as_rgb, same_size, to_gray

# Forward-backward consistency test (Sundaram et al. 2010).
FB_ALPHA, FB_BETA = 0.01, 0.5


@dataclass(frozen=True)
class PairFlicker:
    warp_error: float  # 0-255, over consistent pixels
    frame_difference: float  # 0-255, plain
    consistent_fraction: float  # share of pixels the warp error is computed over (0: fell back to all in-bounds)


def optical_flow(first: ImageLike, second: ImageLike) -> np.ndarray:
    """Dense flow F (H, W, 2) from ``first`` to ``second``: first(x) ~ second(x + F(x))."""
    a, b = to_gray(as_rgb(first)), to_gray(as_rgb(second))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(a, b, None)


def _sample_at(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(x + flow(x)), bilinear; points outside the picture read as 0 (they are masked anyway)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _lands_inside(flow: np.ndarray, grid_dtype: type = np.float32) -> np.ndarray:
    """Pixels whose target x + flow(x) lies inside the picture. ``grid_dtype`` sets the precision of
    the sum, which decides the pixels whose target falls on the border itself."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=grid_dtype), np.arange(h, dtype=grid_dtype))
    tx, ty = grid_x + flow[..., 0], grid_y + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def consistent_flow_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow lands inside the picture and is undone by the backward flow there."""
    back_at = _sample_at(np.ascontiguousarray(backward, dtype=np.float32), forward)
    loop = np.sum((forward + back_at) ** 2, axis=2)
    scale = np.sum(forward**2, axis=2) + np.sum(back_at**2, axis=2)
    return _lands_inside(forward) & (loop < FB_ALPHA * scale + FB_BETA)


def pair_flicker(first: ImageLike, second: ImageLike) -> PairFlicker:
    """Warp error and plain difference between two consecutive frames (see the module docstring)."""
    a, b = as_rgb(first, "first frame"), as_rgb(second, "second frame")
    b = same_size(a, b)
    fwd = optical_flow(a, b)
    mask = consistent_flow_mask(fwd, optical_flow(b, a))
    warped = _sample_at(b, fwd).astype(np.float32)
    error = np.abs(a.astype(np.float32) - warped).mean(axis=2)
    fraction = float(mask.mean())
    if not mask.any():
        # Nothing consistent: the pair shares no content, so score every pixel the flow keeps in view.
        mask = _lands_inside(fwd, int)
        if not mask.any():
            mask = np.ones_like(mask)
    difference = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
    return PairFlicker(float(error[mask].mean()), difference, fraction)


__all__ = ["FB_ALPHA", "FB_BETA", "PairFlicker", "consistent_flow_mask", "optical_flow", "pair_flicker"]
