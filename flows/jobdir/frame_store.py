"""The frame store: every rendered frame once, named by its content key, shared by all jobs.

A frame's key (``flows.job.plan.frame_keys``) digests exactly what its pixels depend on, so a
frame is rendered once for every job that needs it: an edited prompt renders its own frame and
nothing else, an appended frame renders just itself, two jobs that share frames share them here.
A job folder presents its frames in order (``frames/frame_0003.png``) as hard links to the store's
entries, or copies where the file system has no hard links; stitching and the metrics read the
job folder as before.

Entries are written like job-folder frames (``manifest.write_png``: the PNG, then its digest, both
atomic), and the same digest checks decide whether an entry is usable: one that is missing, cut or
overwritten is rendered again. Hard links share bytes, so a job-folder frame corrupted in place
corrupts its entry too, and both are caught by the digest.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from flows.jobdir import frames_io, layout, manifest
from flows.jobdir.layout import FrameStore

log = logging.getLogger("flows.jobdir.frame_store")


def missing_keys(store: FrameStore, keys: Iterable[str], size: tuple[int, int] | None = None) -> set[str]:
    """The keys among ``keys`` whose entry is missing or unverified (the latter logged once each)."""
    missing = set()
    for key in set(keys):
        problem = manifest.frame_problem(store.frame(key), size)
        if problem is None:
            continue
        if problem != "is missing":
            log.warning("%s %s; rendering it again", store.frame(key), problem)
        missing.add(key)
    return missing


def put(store: FrameStore, key: str, image: Image.Image) -> Path:
    """Write a rendered frame into the store under ``key`` (PNG, then its digest)."""
    return manifest.write_png(image, store.frame(key))


def present(store: FrameStore, key: str, job_dir: str | os.PathLike, index: int) -> bool:
    """Make the store's entry ``key`` the job's frame ``index``; False when it already was.

    The frame and its digest are moved into place atomically, as every write of a job folder is.
    """
    source = store.frame(key)
    digest = manifest.recorded_digest(source)
    if digest is None:
        raise manifest.CorruptFrameError(source, "has no digest in the frame store")
    target = frames_io.frame_path(job_dir, index)
    if manifest.recorded_digest(target) == digest and _same_file(source, target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.temp_path(target, secrets.token_hex(6))
    try:
        link_or_copy(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest.write_digest(target, digest)
    return True


def present_stored(store: FrameStore, frames: Iterable[tuple[int, str]], job_dir: str | os.PathLike,
                   size: tuple[int, int] | None = None) -> list[int]:
    """Present every frame ``(index, key)`` whose entry the store holds; the indices it holds."""
    frames = list(frames)
    missing = missing_keys(store, [key for _, key in frames], size)
    held = [(i, key) for i, key in frames if key not in missing]
    for i, key in held:
        present(store, key, job_dir, i)
    return [i for i, _ in held]


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link ``source`` as ``target`` (no second copy of the bytes); copy where the file system
    refuses links (some network and FAT file systems). Returns which it did."""
    try:
        os.link(source, target)
        return "link"
    except OSError:
        shutil.copyfile(source, target)
        return "copy"


def _same_file(a: Path, b: Path) -> bool:
    """The job's frame is the entry itself (a link), or a copy with the entry's bytes."""
    try:
        return os.path.samefile(a, b) or manifest.frame_problem(b) is None
    except OSError:
        return False


__all__ = ["link_or_copy", "missing_keys", "present", "present_stored", "put"]
