"""Checking and converting user images (sources, pose maps, masks) into tensors and back."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from .errors import EngineInputError

log = logging.getLogger("masactrl_engine")

MIN_SIDE, MAX_SIDE = 64, 4096


def check_size(height: int, width: int) -> None:
    """Sizes the SD 1.x VAE and UNet accept: multiples of 8 (the VAE's factor), 64 to 4096.

    The UNet does not need multiples of 64: its decoder matches odd-sized skip connections.
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise EngineInputError(f"{name}: expected a whole number of pixels, got {value!r}")
        if value % 8 or not MIN_SIDE <= value <= MAX_SIDE:
            fixed = min(max(MIN_SIDE, round(value / 8) * 8), MAX_SIDE)
            raise EngineInputError(
                f"{name}: {value} is not allowed; use a multiple of 8 between {MIN_SIDE} and {MAX_SIDE} "
                f"(e.g. {fixed})"
            )


def as_pil(image, field: str) -> Image.Image:
    """A PIL RGB image from a PIL image or an HxW / HxWx3 / HxWx4 array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] in (3, 4) or array.ndim == 2:
            if array.dtype != np.uint8:
                if not np.issubdtype(array.dtype, np.floating):
                    raise EngineInputError(f"{field}: array dtype {array.dtype} is not uint8 or float")
                array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
            return Image.fromarray(array).convert("RGB")
        raise EngineInputError(f"{field}: array of shape {array.shape} is not an image; expected HxW or HxWx3")
    hint = "; open files with PIL.Image.open(path)" if isinstance(image, (str, bytes)) else ""
    raise EngineInputError(f"{field}: expected a PIL.Image or an HxWx3 array, got {type(image).__name__}{hint}")


def source_pixels(image, height: int | None, width: int | None) -> torch.Tensor:
    """The source as a (1, 3, H, W) tensor in [-1, 1], resized when a size is given."""
    pil = as_pil(image, "image")
    if height is None and width is None:
        width_, height_ = pil.size
    else:
        height_, width_ = height or pil.height, width or pil.width
    check_size(height_, width_)
    if pil.size != (width_, height_):
        pil = pil.resize((width_, height_), Image.Resampling.BICUBIC)
    array = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def conditioning_pixels(image, height: int, width: int, field: str) -> torch.Tensor:
    """A pose map as a (3, H, W) tensor in [0, 1], resized (with a log line) when its size differs."""
    pil = as_pil(image, field)
    if pil.size != (width, height):
        log.info("%s: pose map is %dx%d, resized to the output size %dx%d", field, *pil.size, width, height)
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)


def mask_pixels(image, field: str) -> torch.Tensor:
    """An explicit mask as a (1, 1, H, W) float tensor of 0/1 (white, > 50 %, is the subject)."""
    gray = np.asarray(as_pil(image, field).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((gray > 0.5).astype(np.float32))[None, None]


def to_output(images: torch.Tensor, output_type: str):
    """Decoded images in [-1, 1] as a float array in [0, 1] ("np") or PIL images ("pil")."""
    array = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
