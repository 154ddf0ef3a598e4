"""Pictures and masks as the metrics read them: 8-bit RGB arrays, boolean masks, grey and Lab.

Every metric takes a PIL image, a path or an array, so callers (the flow, the CLI, a notebook)
pass whatever they hold; these helpers turn it into one form before any number is computed.
"""

from __future__ import annotations

import os
from typing import Union

import cv2
import numpy as np
from PIL import Image

from flows.jobdir import frames_io

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]


def as_rgb(image: ImageLike, what: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 array from a PIL image, a path or an array (gray, RGB or RGBA)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = frames_io.load_rgb(image)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what}: cannot read {str(image)!r} ({exc})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W, 3) picture, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def as_mask(mask: ImageLike, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A boolean (H, W) mask for a picture of ``size`` = (width, height); white / True / > 0.5 = subject."""
    if isinstance(mask, (str, os.PathLike)):
        try:
            with Image.open(mask) as img:
                mask = img.convert("L")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what}: cannot read {str(mask)!r} ({exc})") from None
    if isinstance(mask, Image.Image):
        if mask.size != tuple(size):
            mask = mask.convert("L").resize(tuple(size), Image.Resampling.NEAREST)
        return np.asarray(mask.convert("L")) > 127
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected an (H, W) mask, got shape {arr.shape}")
    binary = _binary(arr)
    if binary.shape != (size[1], size[0]):
        binary = cv2.resize(binary.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST) > 0
    return binary


def _binary(arr: np.ndarray) -> np.ndarray:
    """Subject pixels of a mask array: booleans as they are, floats in 0..1 above half, else above 127."""
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
        return arr > 0.5
    return arr > 127


def same_size(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` resized (area interpolation) to ``reference``'s height and width, when they differ."""
    h, w = reference.shape[:2]
    if other.shape[:2] == (h, w):
        return other
    return cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit Lab: L scaled to 0-255, a and b offset by 128."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


__all__ = ["ImageLike", "as_mask", "as_rgb", "same_size", "to_gray", "to_lab"]
