"""Files of a job folder: atomic writes, frame/pose file names, what is already on disk.

A job folder (``<output.folder>/<job hash>``) holds::

    job.json            the job as submitted (for people; the hash is in the folder name)
    poses/pose_0000.png the resolved pose maps (only when the job has poses)
    poses/index.json    written last: the pose maps above are complete
    frames/frame_0000.png
    animation.gif, animation.mp4, contact_sheet.png, side_by_side.{gif,mp4}
    result.json         written last: the job finished; the inbox skips jobs that have it

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

FRAMES_DIR = "frames"
POSES_DIR = "poses"
POSES_INDEX = "index.json"
RESULT_FILE = "result.json"
JOB_FILE = "job.json"


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
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}"
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
    return Path(job_dir) / FRAMES_DIR / f"frame_{index:04d}.png"


def pose_path(job_dir: str | os.PathLike, index: int) -> Path:
    return Path(job_dir) / POSES_DIR / f"pose_{index:04d}.png"


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
    for i, text in enumerate(keypoints or ()):
        write_bytes_atomic(pose_path(job_dir, i).with_suffix(".json"), text.encode("utf-8"))
    paths = [save_png_atomic(m.convert("RGB"), pose_path(job_dir, i)) for i, m in enumerate(maps)]
    write_json_atomic(Path(job_dir) / POSES_DIR / POSES_INDEX, {"count": len(paths), "files": [p.name for p in paths]})
    return paths


def read_poses_index(job_dir: str | os.PathLike) -> list[Path] | None:
    """Pose files written by an earlier run of the same job, or None when they are not complete."""
    index = Path(job_dir) / POSES_DIR / POSES_INDEX
    try:
        doc = json.loads(index.read_text())
        paths = [Path(job_dir) / POSES_DIR / name for name in doc["files"]]
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
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
