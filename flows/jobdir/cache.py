"""What an output folder holds, and pruning it to what kept jobs need.

The output folder is a cache: inversions, the frame store, job folders and sweeps are all
recomputed when missing. Nothing removes them on its own, so a scheduled inbox would grow the
disk without bound. :func:`usage` counts what is there; :func:`prune` removes the job folders a
policy lets go (by age, by a total size budget, or all but the newest N of each job name), and
then every store entry and inversion that no remaining job lists in its ``job.json``.

Never removed: a job or inversion folder whose lock a run holds (``frames_io.folder_lock``: a run
holds its job's while it renders and stitches, and an inversion's while it computes it), and
anything a locked job lists. A run that was planned but not yet locked loses at most frames it
then renders again: every reader checks digests, so pruning can cost work, never correctness.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from flows.jobdir import frames_io, layout
from flows.jobdir.layout import FrameStore, InversionFolder, JobFolder
from flows.jobdir.versions import forget_versions

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CacheError(ValueError):
    """A prune request that cannot be carried out as given (field: problem; fix)."""


def parse_size(text: str, field: str = "--max-size") -> int:
    """'10G', '512MiB', '1000' -> bytes."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise CacheError(f"{field}: {text!r} is not a size; write it like 10G, 512MiB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_age(text: str, field: str = "--older-than") -> float:
    """'7d', '12h', '30m', '2w' -> seconds."""
    match = _AGE.fullmatch(str(text))
    if not match:
        raise CacheError(f"{field}: {text!r} is not an age; write it like 7d, 12h, 30m or 2w")
    return float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class JobEntry:
    """A job folder as pruning sees it."""

    path: Path
    name: Optional[str]
    used: float  # when it was last written (result.json, else job.json)
    inversion: Optional[str]
    frame_keys: tuple[str, ...]


@dataclass
class Held:
    count: int = 0
    bytes: int = 0


@dataclass
class Usage:
    """What an output folder holds, by kind; a hard-linked frame counts once (in the store)."""

    inversions: Held
    frames: Held
    jobs: Held
    sweeps: Held

    def rows(self) -> list[tuple[str, Held]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]

    def counts(self) -> dict[str, int]:
        return {name: held.count for name, held in self.rows()}

    @property
    def total(self) -> int:
        return sum(held.bytes for _, held in self.rows())


@dataclass
class PruneReport:
    removed: list[Path] = field(default_factory=list)
    freed: int = 0
    kept_jobs: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)
    dry_run: bool = False


def _tree_bytes(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes of the files under ``path`` (or of ``path``), each inode once across calls."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    total = 0
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _folders(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink() and layout.is_job_folder_name(p.name))


def job_entries(output: str | os.PathLike) -> list[JobEntry]:
    """Every job folder of ``output`` (one with a job.json), oldest use first."""
    entries = []
    for path in _folders(Path(output)):
        folder = JobFolder(path)
        try:
            doc = json.loads(folder.job_file.read_text())
        except (OSError, ValueError):
            continue
        stamps = [p.stat().st_mtime for p in (folder.result, folder.job_file) if p.is_file()]
        job = doc.get("job") if isinstance(doc, dict) else None
        entries.append(JobEntry(path=path, name=(job or {}).get("name"), used=max(stamps, default=0.0),
                                inversion=doc.get("inversion_key"), frame_keys=tuple(doc.get("frame_keys") or ())))
    return sorted(entries, key=lambda e: (e.used, e.path.name))


def usage(output: str | os.PathLike) -> Usage:
    """What ``output`` holds, by kind."""
    output = Path(output)
    seen: set[tuple[int, int]] = set()  # the store first: job folders' links to it then count nothing

    def held(paths: list[Path]) -> Held:
        return Held(len(paths), sum(_tree_bytes(p, seen) for p in paths))

    entries = FrameStore.of(output).entries()
    frames = Held(len(entries), sum(_tree_bytes(p, seen) + _tree_bytes(layout.digest_path(p), seen)
                                    for p in entries if p.is_file()))
    return Usage(frames=frames, inversions=held(_folders(output / layout.INVERSIONS_DIR)),
                 jobs=held([j.path for j in job_entries(output)]), sweeps=held(_folders(output / layout.SWEEPS_DIR)))


def _kept_by_policy(jobs: list[JobEntry], busy: set[Path], older_than: Optional[float],
                    keep_last: Optional[int], now: float) -> list[JobEntry]:
    kept = [j for j in jobs if older_than is None or now - j.used <= older_than or j.path in busy]
    if keep_last is not None:
        newest: dict[Optional[str], list[JobEntry]] = {}
        for j in reversed(kept):  # newest first
            newest.setdefault(j.name, []).append(j)
        allowed = {j.path for group in newest.values() for j in group[:keep_last]}
        kept = [j for j in kept if j.path in allowed or j.path in busy]
    return kept


def _needed_bytes(output: Path, kept: list[JobEntry], seen: Optional[set[tuple[int, int]]] = None) -> int:
    """Bytes the output folder would hold with only ``kept`` and what they list; the files counted
    are added to ``seen``."""
    seen = set() if seen is None else seen
    store = FrameStore.of(output)
    total = 0
    for j in kept:
        total += sum(_tree_bytes(p, seen) for p in (store.frame(k) for k in j.frame_keys) if p.is_file())
        if j.inversion:
            folder = InversionFolder.of(output, j.inversion).path
            total += _tree_bytes(folder, seen) if folder.is_dir() else 0
        total += _tree_bytes(j.path, seen)
    return total


def prune(output: str | os.PathLike, older_than: Optional[float] = None, max_bytes: Optional[int] = None,
          keep_last: Optional[int] = None, dry_run: bool = False, now: Optional[float] = None) -> PruneReport:
    """Remove the job folders the policy lets go, oldest first, then what no remaining job lists.

    ``older_than``: seconds since a job was last written; ``keep_last``: the newest N job folders of
    each job name (unnamed jobs are one group); ``max_bytes``: then drop the oldest jobs until
    what remains fits. Sweep folders go by age only. ``dry_run``: report, remove nothing.
    """
    if keep_last is not None and keep_last < 0:
        raise CacheError(f"--keep-last: {keep_last} must be 0 or more")
    output = Path(output).absolute()
    if not output.is_dir():
        raise CacheError(f"output folder: {output} does not exist; give the output.folder of your jobs")
    now = time.time() if now is None else now
    jobs = job_entries(output)
    busy = {j.path for j in jobs if frames_io.is_locked(j.path)}
    kept = _kept_by_policy(jobs, busy, older_than, keep_last, now)
    if max_bytes is not None:
        while _needed_bytes(output, kept) > max_bytes:
            victim = next((j for j in kept if j.path not in busy), None)  # the oldest that is free
            if victim is None:
                break
            kept.remove(victim)

    report = PruneReport(kept_jobs=[j.path for j in kept], busy=sorted(busy), dry_run=dry_run)
    kept_paths = {j.path for j in kept}
    seen: set[tuple[int, int]] = set()
    # What the kept jobs use is counted first, so a frame linked from a kept job frees nothing.
    _needed_bytes(output, kept, seen)
    doomed = [j.path for j in jobs if j.path not in kept_paths]
    keys = {k for j in kept for k in j.frame_keys}
    inversions = {j.inversion for j in kept if j.inversion}
    store = FrameStore.of(output)
    for entry in store.entries():
        if not any(layout.folder_name(k) == entry.stem for k in keys):
            doomed += [entry, layout.digest_path(entry)]
    for folder in _folders(output / layout.INVERSIONS_DIR):
        if folder.name not in {layout.folder_name(k) for k in inversions} and not frames_io.is_locked(folder):
            doomed.append(folder)
    for folder in _folders(output / layout.SWEEPS_DIR):
        if older_than is not None and now - folder.stat().st_mtime > older_than and not frames_io.is_locked(folder):
            doomed.append(folder)

    for path in doomed:
        if not path.exists():
            continue
        report.freed += _tree_bytes(path, seen)
        report.removed.append(path)
        if dry_run:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            layout.lock_path(path).unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)
    if not dry_run:
        forget_versions(output, {p.name for p in report.removed})
    return report


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["CacheError", "Held", "JobEntry", "PruneReport", "Usage", "human_bytes", "job_entries", "parse_age",
           "parse_size", "prune", "usage"]
