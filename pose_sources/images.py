"""Already-rendered pose maps: a folder, a glob or a list of images.

They have no keypoints, so they live in `PoseMaps`, a sibling of `PoseSequence` with the
same `render(size)` / `len()` interface; the flows need not care which one they got.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import PoseSourceError
from .paths import IMAGE_EXTENSIONS, files_with_suffix, glob_files, is_glob
from .keypoints import Fit, Size, _as_size

ImageSource = str | Path | Image.Image


def list_pose_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of a folder (natural order), of a glob pattern (natural order) or of a list (as given)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise PoseSourceError("the list of pose images is empty: give at least one image file")
        paths = [Path(p) for p in source]
        for p in paths:
            if not p.is_file():
                raise PoseSourceError(f"{p}: pose image not found")
        return paths
    text = str(source)
    if is_glob(text):
        paths = [p for p in glob_files(text) if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not paths:
            raise PoseSourceError(f"{text}: the pattern matches no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return paths
    path = Path(text)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PoseSourceError(f"{path}: no such pose image, folder or pattern")
    paths = files_with_suffix(path, IMAGE_EXTENSIONS)
    if not paths:
        raise PoseSourceError(f"{path}: folder holds no pose images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img``, scaling high-bit-depth pixels instead of clipping them.

    Pillow's ``convert("RGB")`` clips 16-bit greyscale ("I;16", "I") at 255, so a 16-bit picture
    comes out almost all white; scale 0..65535 to 0..255 instead. 32-bit integer pictures that use
    more than 16 bits are scaled by their maximum; float pictures ("F") in 0..1 are scaled by 255.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0) <= 1.0 else 1.0
        grey = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")


def open_rgb(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return to_rgb8(source)
    try:
        with Image.open(source) as img:
            return to_rgb8(img)
    except FileNotFoundError:
        raise PoseSourceError(f"{source}: pose image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise PoseSourceError(f"{source}: cannot decode as an image ({exc})") from None


def fit_image(image: Image.Image, size: Size, fit: Fit = "letterbox") -> Image.Image:
    """Resize to `size`: `stretch` fills it exactly; `letterbox` keeps the aspect ratio, pads with black."""
    W, H = _as_size(size)
    image = image.convert("RGB")
    if image.size == (W, H):
        return image.copy()
    if fit == "stretch":
        return image.resize((W, H), Image.Resampling.BILINEAR)
    if fit != "letterbox":
        raise PoseSourceError(f"fit must be 'stretch' or 'letterbox', got {fit!r}")
    w, h = image.size
    s = min(W / w, H / h)
    nw, nh = max(1, min(W, round(w * s))), max(1, min(H, round(h * s)))
    out = Image.new("RGB", (W, H), (0, 0, 0))
    out.paste(image.resize((nw, nh), Image.Resampling.BILINEAR), ((W - nw) // 2, (H - nh) // 2))
    return out


@dataclass(eq=False)
class PoseMaps:
    """Pre-rendered pose maps, opened lazily; `render(size)` fits each to `size` with `fit`."""

    sources: list[ImageSource]
    fit: Fit = "letterbox"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        if self.fit not in ("stretch", "letterbox"):
            raise PoseSourceError(f"fit must be 'stretch' or 'letterbox', got {self.fit!r}")

    @classmethod
    def from_source(cls, source: str | Path | Sequence[str | Path], fit: Fit = "letterbox") -> PoseMaps:
        paths = list_pose_images(source)
        return cls(list(paths), fit, {"files": [str(p) for p in paths]})

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def canvas(self) -> Size:
        """Size of the first map (what `render()` without a size gives)."""
        return open_rgb(self.sources[0]).size

    def render(self, size: Size | None = None) -> list[Image.Image]:
        size = size or self.canvas
        return [fit_image(open_rgb(src), size, self.fit) for src in self.sources]
