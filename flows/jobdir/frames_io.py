"""Files of a job folder: atomic writes, frames and pose maps, what is already on disk.

Where each file goes is ``flows.jobdir.layout`` (its docstring draws the whole output folder).
Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash leaves either the old file, the new one or nothing: never half a PNG.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from flows.jobdir import layout


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place.

    The temporary name keeps ``path``'s suffix so writers that pick a format by extension
    (PIL, ffmpeg) still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _new_temp_file(path: Path) -> Path:
    """Create an empty, unique temporary file beside ``path`` (same suffix).

    Created with mode 0666 minus the process umask, like any ordinary file, so the finished file
    is readable by a web server or other users when the umask allows it (``tempfile.mkstemp``
    would make it 0600). O_EXCL makes the name ours alone.
    """
    for _ in range(100):
        tmp = layout.temp_path(path, secrets.token_hex(6))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def frame_path(job_dir: str | os.PathLike, index: int) -> Path:
    return layout.JobFolder(job_dir).frame(index)


def pose_path(job_dir: str | os.PathLike, index: int) -> Path:
    return layout.JobFolder(job_dir).pose(index)


def is_complete_png(path: str | os.PathLike, size: tuple[int, int] | None = None) -> bool:
    """True when ``path`` is a readable PNG (of ``size`` = (width, height) when given)."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and (size is None or img.size == tuple(size))
    except (FileNotFoundError, OSError, ValueError):
        return False


def load_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def write_poses(job_dir: str | os.PathLike, maps: list[Image.Image], keypoints: list[str] | None = None) -> list[Path]:
    """Write the pose maps (and, when given, each frame's requested keypoints as OpenPose JSON,
    ``pose_0000.json``, for the pose-fidelity metric), then the index that says they are complete."""
    folder = layout.JobFolder(job_dir)
    for i, text in enumerate(keypoints or ()):
        write_bytes_atomic(folder.pose_keypoints(i), text.encode("utf-8"))
    paths = [save_png_atomic(m.convert("RGB"), folder.pose(i)) for i, m in enumerate(maps)]
    write_json_atomic(folder.poses_index, {"count": len(paths), "files": [p.name for p in paths]})
    return paths


def read_poses_index(job_dir: str | os.PathLike) -> list[Path] | None:
    """Pose files written by an earlier run of the same job, or None when they are not complete."""
    folder = layout.JobFolder(job_dir)
    try:
        doc = json.loads(folder.poses_index.read_text())
        paths = [folder.poses_dir / name for name in doc["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(paths) != doc.get("count") or not all(is_complete_png(p) for p in paths):
        return None
    return paths


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` across processes (a shared filesystem's advisory locks): two
    jobs on one source invert it once, two identical runs render once, parallel workers write the
    tiny checkpoint once. The second waits, then finds the work on disk."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_path(folder), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(folder: Path) -> bool:
    """Whether a run holds ``folder_lock(folder)`` right now (asked without waiting)."""
    lock = layout.lock_path(folder)
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
