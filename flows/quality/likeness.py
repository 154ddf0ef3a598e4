"""Likeness to the source: how much of its look a frame keeps (Lab colour distance, background SSIM), and PSNR.

- **appearance distance** (CIELAB units): 1-D earth mover's distance between the source's and
  the frame's L*, a*, b* histograms, averaged over the three channels: how far, on average, the
  colours moved. Inside the subject mask when one is known, over the whole frame otherwise. Also
  the Bhattacharyya distance of 32-bin histograms (0 same, 1 disjoint).
- **background SSIM** (only with a mask): SSIM of source and frame averaged over the pixels
  outside the subject in both.
- **PSNR** (dB): the source picture against the source branch's final decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from flows.quality.pictures import ImageLike, as_mask, as_rgb, same_size, to_lab

HIST_BINS = 32  # Bhattacharyya histograms; the EMD uses all 256 levels
_LAB_UNITS = np.array([100.0 / 255.0, 1.0, 1.0])  # 8-bit Lab step -> CIELAB units per channel

Region = Literal["subject", "frame"]


@dataclass(frozen=True)
class Appearance:
    emd: float  # mean over L*, a*, b* of the 1-D earth mover's distance, CIELAB units
    emd_per_channel: tuple[float, float, float]
    bhattacharyya: float  # mean over channels, 0..1
    region: Region
    background_ssim: Optional[float]  # only with a mask and a non-empty shared background


def _subject_masks(
    shape: tuple[int, ...],
    source_mask: Optional[ImageLike],
    frame_mask: Optional[ImageLike],
) -> tuple[np.ndarray, np.ndarray, Region]:
    """(source mask, frame mask, region) for pictures of ``shape``; one mask given = used for both."""
    if source_mask is None and frame_mask is None:
        everything = np.ones(shape[:2], dtype=bool)
        return everything, everything, "frame"
    size = (shape[1], shape[0])
    m_src = as_mask(source_mask if source_mask is not None else frame_mask, size, "source mask")
    m_frm = as_mask(frame_mask if frame_mask is not None else source_mask, size, "frame mask")
    if not m_src.any() or not m_frm.any():
        raise ValueError("mask: the subject mask is empty; give a mask with white subject pixels, or no mask")
    return m_src, m_frm, "subject"


def _histograms(lab: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    pixels = lab[mask]
    return [np.bincount(pixels[:, c], minlength=256).astype(np.float64) for c in range(3)]


def _histogram_distances(h_src: list[np.ndarray], h_frm: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per Lab channel: (EMD in CIELAB units, Bhattacharyya distance on HIST_BINS bins)."""
    emd, bhat = [], []
    for c in range(3):
        p, q = h_src[c] / h_src[c].sum(), h_frm[c] / h_frm[c].sum()
        # In 1-D the earth mover's distance is the area between the two cumulative histograms.
        emd.append(float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * _LAB_UNITS[c]))
        pb, qb = p.reshape(HIST_BINS, -1).sum(axis=1), q.reshape(HIST_BINS, -1).sum(axis=1)
        bhat.append(float(math.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(pb * qb)))))))
    return emd, bhat


def appearance(
    source: ImageLike,
    frame: ImageLike,
    source_mask: Optional[ImageLike] = None,
    frame_mask: Optional[ImageLike] = None,
) -> Appearance:
    """Colour distance of ``frame`` from ``source``: inside the subject masks when given (one
    mask given = used for both), over the whole pictures otherwise; plus background SSIM."""
    frm = as_rgb(frame, "frame")
    src = same_size(frm, as_rgb(source, "source"))
    m_src, m_frm, region = _subject_masks(frm.shape, source_mask, frame_mask)
    emd, bhat = _histogram_distances(_histograms(to_lab(src), m_src), _histograms(to_lab(frm), m_frm))
    ssim = masked_ssim(src, frm, ~m_src & ~m_frm) if region == "subject" else None
    return Appearance(float(np.mean(emd)), tuple(emd), float(np.mean(bhat)), region, ssim)


def masked_ssim(a: ImageLike, b: ImageLike, region: np.ndarray) -> Optional[float]:
    """Mean of the SSIM map of two pictures over ``region`` (None when the region is empty)."""
    # Imported here: scikit-image brings scipy.ndimage (a quarter second), and every CLI command
    # imports this module while only jobs with masks need SSIM.
    from skimage.metrics import structural_similarity

    x, y = as_rgb(a), as_rgb(b)
    y = same_size(x, y)
    if not region.any():
        return None
    side = min(x.shape[:2])
    win = min(7, side if side % 2 else side - 1)  # SSIM needs an odd window that fits the picture
    if win < 3:
        return None
    _, full = structural_similarity(x, y, channel_axis=2, data_range=255, full=True, win_size=win)
    return float(full.mean(axis=2)[region].mean())


def psnr(reference: ImageLike, test: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB of 8-bit pictures (inf when identical)."""
    x = as_rgb(reference, "reference").astype(np.float64)
    y = same_size(x, as_rgb(test, "test")).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


__all__ = ["HIST_BINS", "Appearance", "appearance", "masked_ssim", "psnr"]
