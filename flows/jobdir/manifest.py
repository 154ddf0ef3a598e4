"""Frame digests: a frame counts as done only when its PNG matches the digest written with it.

Every frame ``frames/frame_0001.png`` has a one-line manifest ``frames/frame_0001.sha256`` in
``sha256sum`` format (``<hex>  frame_0001.png``; ``cd frames && sha256sum -c *.sha256`` checks a
folder by hand). The PNG is encoded in memory, its digest taken from those exact bytes, the PNG
moved into place atomically and then the digest, also atomically. A crash between the two leaves
a frame without a digest, which is rendered again: never a digest that vouches for other bytes.

Why one small file per frame and not one manifest per job: the frames of a job are written at
the same time by several chunk tasks — threads of one process, Dask worker processes, or
machines sharing the folder over NFS. A single manifest would need read-modify-write under a
lock that works across all of them (fcntl locks are unreliable on network file systems). Each
frame has exactly one writer at a time, and ``os.replace`` of a per-frame file is atomic, so no
lock is needed and no writer can drop another's entry.

What does not match (a truncated PNG, a PNG overwritten with other pixels, a PNG without a
digest) is *unverified*: resumed runs render it again, stitching refuses it naming the file,
and the inbox does not count the job as finished.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from flows.jobdir import frames_io
from flows.jobdir.layout import digest_path

log = logging.getLogger("flows.jobdir.manifest")

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class CorruptFrameError(RuntimeError):
    """A frame file that does not match its digest (or has none); the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}; run the job again to render this frame anew")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_frame(image: Image.Image, job_dir: str | os.PathLike, index: int) -> Path:
    """Write frame ``index`` of a job (PNG, then its digest; both atomic). Returns the PNG's path."""
    return write_png(image, frames_io.frame_path(job_dir, index))


def write_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as the PNG ``path``, then its digest beside it (both atomic)."""
    data = png_bytes(image)
    path = frames_io.write_bytes_atomic(path, data)
    write_digest(path, hashlib.sha256(data).hexdigest())
    return path


def write_digest(frame: str | os.PathLike, sha256: str) -> Path:
    frame = Path(frame)
    return frames_io.write_bytes_atomic(digest_path(frame), f"{sha256}  {frame.name}\n".encode())


def recorded_digest(frame: str | os.PathLike) -> str | None:
    """The digest written with ``frame``, or None when there is none (or it is unreadable)."""
    frame = Path(frame)
    try:
        line = digest_path(frame).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    match = _LINE.match(line)
    if match is None or match.group(2) != frame.name:
        return None
    return match.group(1)


def check_frame_bytes(frame: str | os.PathLike, data: bytes, size: tuple[int, int] | None = None) -> str | None:
    """What is wrong with ``data`` as the content of ``frame`` (None: it is verified)."""
    expected = recorded_digest(frame)
    if expected is None:
        return "has no digest in the frame manifest (written by an interrupted or older run)"
    if hashlib.sha256(data).hexdigest() != expected:
        return "does not match the digest written with it (truncated or overwritten)"
    if size is not None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.size != tuple(size):
                    return f"is {img.size[0]}x{img.size[1]}, expected {size[0]}x{size[1]}"
        except (OSError, ValueError) as exc:
            return f"is not a readable PNG ({exc})"
    return None


def frame_problem(frame: str | os.PathLike, size: tuple[int, int] | None = None) -> str | None:
    """Why ``frame`` cannot be used (missing, no digest, digest mismatch, wrong size), or None."""
    try:
        data = Path(frame).read_bytes()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc})"
    return check_frame_bytes(frame, data, size)


def is_verified(frame: str | os.PathLike, size: tuple[int, int] | None = None) -> bool:
    return frame_problem(frame, size) is None


def unverified_frames(job_dir: str | os.PathLike, indices: Iterable[int],
                      size: tuple[int, int] | None = None) -> list[int]:
    """Indices among ``indices`` whose frame is missing or does not match its digest.

    A frame that exists but fails the check is logged (with the reason): it will be rendered again.
    """
    todo = []
    for i in indices:
        path = frames_io.frame_path(job_dir, i)
        problem = frame_problem(path, size)
        if problem is None:
            continue
        if problem != "is missing":
            log.warning("%s %s; rendering it again", path, problem)
        todo.append(i)
    return todo


def load_verified_frame(frame: str | os.PathLike) -> Image.Image:
    """The frame as RGB, decoded from the very bytes that were checked against its digest.

    Raises :class:`CorruptFrameError` naming the file when it is missing, unverified or does
    not decode.
    """
    frame = Path(frame)
    try:
        data = frame.read_bytes()
    except OSError as exc:
        raise CorruptFrameError(frame, f"cannot be read ({exc.strerror or exc})") from None
    problem = check_frame_bytes(frame, data)
    if problem is not None:
        raise CorruptFrameError(frame, problem)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise CorruptFrameError(frame, f"does not decode ({exc})") from None


def all_verified(frames: Sequence[str | os.PathLike]) -> bool:
    return all(is_verified(f) for f in frames)
