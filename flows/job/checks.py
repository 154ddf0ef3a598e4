"""Checks of user inputs that are cheap enough to run before any work .

Everything here raises ``ValueError`` with a message that says what is wrong and how to fix it
(the job model's validators put the field name in front), or returns a list of
``(field, message)`` problems (:func:`environment_problems`) for the CLI to print.

- :func:`image_header` checks a picture without decoding it (validation): the path's length, the
  format, the pixel count read from the header (a decompression bomb is refused before any pixel
  is decoded), the pixel mode, and a PNG's chunks and checksums (a cut file). :func:`open_image`
  decodes it where the pixels are needed (a PNG with corrupt zlib data under valid checksums
  fails only there) and scales high-bit-depth modes to 8 bits (:func:`to_rgb8`).
- :func:`safetensors_problem`, :func:`torch_checkpoint_problem`: whether a LoRA or detector
  weights file is whole and of its format, from its header alone.
- :func:`input_root_problem`, :func:`output_root_problem`: paths outside the folders a server
  reads and writes.

What a job needs from the machine it runs on is checked in ``flows/job/preflight.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

from PIL import Image, UnidentifiedImageError

from pose_sources.images import to_rgb8

MAX_FRAME_SIDE = 2048
# The largest frame is 2048x2048; a source may be bigger (it is cropped and resized), but a picture
# of more than 16 times that many pixels costs seconds and gigabytes to decode for nothing.
MAX_SOURCE_PIXELS = 16 * MAX_FRAME_SIDE * MAX_FRAME_SIDE


def path_length_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` is longer than the file system allows, or None."""
    text = os.fspath(path)
    try:
        path_max = os.pathconf("/", "PC_PATH_MAX")
        name_max = os.pathconf("/", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX
        path_max, name_max = 4096, 255
    if len(os.fsencode(text)) >= path_max:
        return f"the path is {len(text)} characters long; the system allows {path_max - 1}"
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > name_max:
        return f"a file or folder name in the path is {longest} bytes long; the system allows {name_max}"
    return None


class ImageProblem(ValueError):
    """A picture that cannot be used; the message names the file, what is wrong and the fix."""


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int
    mode: str


# What cameras, phones and editors save a picture as (Pillow's JPEG reader also opens a phone's
# MPO). Pillow opens more formats than these, some by running other programs (EPS: Ghostscript).
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
# Pixel modes to_rgb8 turns into 8-bit RGB (16-bit and float greyscale scaled, not clipped).
SOURCE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                          "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_FIX = "give an intact PNG or JPEG file"


def _too_many_pixels(text: str, pixels: Optional[int], limit: int) -> ImageProblem:
    size = f"{pixels / 1e6:.0f} MP" if pixels else "too many pixels"
    return ImageProblem(f"{text!r} is {size}, more than the limit of {limit / 1e6:.0f} MP; scale the picture down "
                        f"(frames are at most {MAX_FRAME_SIDE}x{MAX_FRAME_SIDE})")


@contextmanager
def _opened(path: str | os.PathLike, max_pixels: int) -> Iterator[Image.Image]:
    """The picture opened lazily (header only) once its path, format, pixel count and mode are
    checked; any error reading it, then or inside the block, becomes an ImageProblem."""
    text = os.fspath(path)
    problem = path_length_problem(text)
    if problem:
        raise ImageProblem(f"{problem}; move the file to a shorter path")
    try:
        if not Path(text).expanduser().is_file():
            raise ImageProblem(f"{text!r} does not exist or is not a file; give the path of a picture")
        empty = Path(text).expanduser().stat().st_size == 0
    except OSError as exc:
        raise ImageProblem(f"{text!r} cannot be accessed ({exc.strerror or exc})") from None
    if empty:
        raise ImageProblem(f"{text!r} is empty; {_FIX}")
    try:
        # Image.MAX_IMAGE_PIXELS is left as it is: one setting for the whole process. At its
        # default (89 MP) Pillow passes every picture within MAX_SOURCE_PIXELS (67 MP); it warns
        # from 89 MP (refused just below) and raises in open() from 179 MP, before a pixel is
        # decoded, which is reported like our own limit.
        with Image.open(Path(text).expanduser(), formats=SOURCE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _too_many_pixels(text, width * height, max_pixels)
            if img.mode not in SOURCE_MODES:
                raise ImageProblem(f"{text!r} has pixel mode {img.mode!r}, which is not turned into RGB here; save "
                                   "it as an 8-bit RGB PNG or JPEG")
            yield img
    except ImageProblem:
        raise
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit of ..."
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise _too_many_pixels(text, int(found.group(1)) if found else None,
                               min(max_pixels, pillow_limit) if pillow_limit else max_pixels) from None
    except UnidentifiedImageError:
        raise ImageProblem(f"{text!r} is not a picture in a format read here ({', '.join(SOURCE_FORMATS)}); "
                           f"{_FIX}") from None
    except (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error) as exc:
        raise ImageProblem(f"{text!r} is not a readable image ({exc}); {_FIX}") from None


def image_header(path: str | os.PathLike, max_pixels: int = MAX_SOURCE_PIXELS) -> ImageHeader:
    """Check a picture without decoding its pixels: path length, format, pixel count (a
    decompression bomb is refused from its header), pixel mode, and for a PNG its structure (every
    chunk there with a valid checksum: a cut or damaged file is refused). Raises ImageProblem.

    A PNG whose compressed pixel data is garbage under valid checksums passes: only decoding
    finds that, which :func:`open_image` does where the pixels are used."""
    with _opened(path, max_pixels) as img:
        header = ImageHeader(img.format or "", img.width, img.height, img.mode)
        img.verify()  # PNG: reads the chunks and their CRCs, decompresses nothing
    return header


def open_image(path: str | os.PathLike, max_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
    """The picture decoded, as 8-bit RGB (:func:`to_rgb8`), after the checks of :func:`image_header`
    but the PNG checksums (validation checked them). Raises ImageProblem, e.g. for compressed data
    that does not decode or a JPEG cut short."""
    with _opened(path, max_pixels) as img:
        img.load()
        return to_rgb8(img)


# ------------------------------------------------------------------ weights files, by their header
# Validation reads headers only: a LoRA or detector checkpoint can be gigabytes, and a file that
# is empty, cut short or of another format must be named with its field before anything loads
# it (a picture renamed .safetensors crashed `validate` with safetensors' traceback).

SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the JSON header (MAX_HEADER_SIZE)
_SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                            "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _safetensors_header(path: Path, size: int) -> tuple[Optional[dict], int, str]:
    """(the JSON header, the bytes after it, "") or (None, 0, why it cannot be read).

    The file is an 8-byte little-endian length, that much JSON, then the tensors' bytes."""
    if size < 8:
        return None, 0, "the file is empty" if size == 0 else f"the file is only {size} bytes"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(SAFETENSORS_MAX_HEADER, size - 8):
            return None, 0, (f"header unreadable: its first 8 bytes announce a {length}-byte header in a "
                             f"{size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, 0, "header unreadable: not JSON"
    if not isinstance(header, dict):
        return None, 0, f"header unreadable: a JSON {type(header).__name__}, not a table of tensors"
    return header, size - 8 - length, ""


def _tensor_extent(name: str, info: Any) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes after the header; ValueError when the entry is not one."""
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"header unreadable: tensor {name!r} has no valid data_offsets")
    width = _SAFETENSORS_DTYPE_BYTES.get(info.get("dtype"))
    shape = info.get("shape")
    if width and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
        if math.prod(shape) * width != offsets[1] - offsets[0]:
            raise ValueError(f"header unreadable: tensor {name!r} has {offsets[1] - offsets[0]} bytes for shape "
                             f"{shape} of {info['dtype']}")
    return offsets[0], offsets[1]


def safetensors_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` is not a whole safetensors file, judged from its header and size, or None.

    Checks what ``safetensors.safe_open`` checks before it reads a tensor: the header's length
    and JSON, each tensor's offsets and byte count, and that the tensors exactly cover the rest
    of the file (shorter: truncated; longer: not one safetensors file).
    """
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        header, data, why = _safetensors_header(path, size)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if header is None:
        return why
    try:
        extents = sorted(_tensor_extent(name, info) for name, info in header.items() if name != "__metadata__")
    except ValueError as exc:
        return str(exc)
    if not extents:
        return "it holds no tensors"
    end = 0
    for begin, stop in extents:
        if begin != end:
            return "header unreadable: its tensors overlap or leave gaps"
        end = stop
    if end > data:
        return f"truncated: the header describes {end} bytes of tensors, the file holds {data}"
    if end < data:
        return f"{data - end} bytes follow its tensors, so it is not one whole safetensors file"
    return None


_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch.serialization.MAGIC_NUMBER


def torch_checkpoint_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` is not a ``torch.save`` checkpoint, judged from its header, or None.

    torch.save writes a zip archive (since torch 1.6; its central directory, at the end, lists
    ``<name>/data.pkl``: a cut file loses it) or, before that, a pickle stream that opens with
    torch's magic number (the published OpenPose weights are of that age). Nothing is unpickled.
    """
    import zipfile

    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return None
            return "not a PyTorch checkpoint: a zip archive without data.pkl"
        with open(path, "rb") as handle:
            head = handle.read(64)
    except (OSError, zipfile.BadZipFile) as exc:
        return f"not a PyTorch checkpoint: cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head:
        return None
    return ("not a PyTorch checkpoint (neither torch.save's zip archive, whole, nor its older pickle format); "
            "the file is cut short or of another kind")


def weights_files_problem(folder: str | os.PathLike, names: Sequence[str]) -> Optional[str]:
    """Why the weights ``names`` in ``folder`` cannot be loaded (missing, empty, not checkpoints), or None."""
    folder = Path(folder).expanduser()
    for name in names:
        path = folder / name
        if not path.is_file():
            return f"{folder} has no {name}"
        if (problem := torch_checkpoint_problem(path)):
            return f"{path}: {problem}"
    return None


def writable_folder_problem(folder: str | os.PathLike) -> Optional[str]:
    """Why results cannot be written below ``folder`` (created if missing), or None.

    Probes the nearest existing folder with an unnamed temporary file (O_TMPFILE where the
    system has it), so nothing appears in it, even for root, who passes every permission bit.
    """
    path = Path(folder).expanduser().absolute()
    problem = path_length_problem(path)
    if problem:
        return problem
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {path} cannot be created; pick another folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user; pick a folder you can write to"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc}); pick a writable folder"
    return None


INPUT_ROOTS_ENV = "MASACTRL_INPUT_ROOTS"
OUTPUT_ROOT_ENV = "MASACTRL_OUTPUT_ROOT"


def _roots(environ, name: str) -> list[Path]:
    raw = (environ.get(name) or "").strip()
    return [Path(os.path.realpath(Path(r).expanduser())) for r in raw.split(os.pathsep) if r.strip()]


def _inside(path: str | os.PathLike, roots: list[Path]) -> bool:
    # realpath: a symlink inside a root that points outside it does not count as inside.
    real = os.path.realpath(Path(path).expanduser())
    return any(os.path.commonpath([real, str(root)]) == str(root) for root in roots)


def input_root_problem(path: str | os.PathLike, environ=None) -> Optional[str]:
    """Why ``path`` may not be read (outside ``$MASACTRL_INPUT_ROOTS``), or None (inside, or unset)."""
    allowed = _roots(os.environ if environ is None else environ, INPUT_ROOTS_ENV)
    if not allowed or _inside(path, allowed):
        return None
    where = ", ".join(str(r) for r in allowed)
    return f"{os.fspath(path)} is outside the input folders this server reads ({where}); put the file there"


def output_root_problem(folder: str | os.PathLike, environ=None) -> Optional[str]:
    """Why results may not be written below ``folder`` (outside ``$MASACTRL_OUTPUT_ROOT``), or None."""
    root = _roots(os.environ if environ is None else environ, OUTPUT_ROOT_ENV)[:1]
    if not root or _inside(folder, root):
        return None
    return f"{os.fspath(folder)} is outside the output root {root[0]}; give a folder below it"
