"""Temporary files a killed run left in its job folder (and in the frame store).

``frames_io.atomic_write`` writes every file under a hidden temporary name beside its target,
``.<stem>.<random token>.tmp<suffix>`` (e.g. ``.animation.3f9c2a1b07de.tmp.mp4``), and moves it
into place when complete. A ``kill -9`` during MP4 encoding leaves that file behind. The next run
of the same job removes such files from the job folder and its ``frames/`` and ``poses/``.

Only files of that exact pattern are touched, and only when they were last written before the
run started (minus a few seconds of grace): a file still being written by a concurrent run of the
same job (two identical runs at once are allowed) is modified continually and is kept. No lock is
needed for that: a writer that stopped writing for longer than the grace is dead or finished, and
a finished writer has already renamed its file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from flows.jobdir.layout import JOB_FILE, TEMP_NAME, JobFolder

log = logging.getLogger("flows.jobdir.stale_files")

GRACE_SECONDS = 5.0


def remove_stale_temp_files(job_dir: str | os.PathLike, started: float | None = None,
                            grace: float = GRACE_SECONDS) -> list[Path]:
    """Remove atomic-write temporary files in ``job_dir`` last modified before ``started - grace``.

    ``started`` is the run's start (``time.time()``, the default: now). Returns what was removed;
    logs one line when anything was.
    """
    started = time.time() if started is None else started
    return _remove(job_dir, JobFolder(job_dir).temp_folders,
                   lambda entry, match: entry.stat(follow_symlinks=False).st_mtime < started - grace)


# A frame store entry is written in milliseconds by whichever job renders it first; a temporary
# file there untouched for this long belongs to a killed writer.
STORE_GRACE_SECONDS = 60.0


def remove_stale_store_temp_files(store_dir: str | os.PathLike, grace: float = STORE_GRACE_SECONDS) -> list[Path]:
    """Remove temporary files in the frame store (shared by every job) older than ``grace``."""
    limit = time.time() - grace
    return _remove(store_dir, (Path(store_dir),), lambda entry, match: entry.stat(follow_symlinks=False).st_mtime < limit)


# Written by plan_job before the job lock is taken (a concurrent run may be writing them now).
_WRITTEN_OUTSIDE_THE_LOCK = (Path(JOB_FILE).stem,)


def remove_abandoned_temp_files(job_dir: str | os.PathLike) -> list[Path]:
    """Under the job's lock: the temp files of frames and outputs, whatever their age.

    While a run holds the job lock no other run of the job renders or stitches, so such a file
    belongs to a killed run: nobody will rename it (an encoder orphaned by ``kill -9`` may still be
    writing into it; it then writes into an unlinked file). Files that ``plan_job`` writes before
    the lock (job.json, poses/) keep the grace of :func:`remove_stale_temp_files`.
    """
    folder = JobFolder(job_dir)
    return _remove(job_dir, (folder.path, folder.frames_dir),
                   lambda entry, match: match.group("stem") not in _WRITTEN_OUTSIDE_THE_LOCK)


def _remove(job_dir, folders, abandoned) -> list[Path]:
    """Remove the temp files in ``folders`` (of ``job_dir``) for which ``abandoned(entry, match)``;
    log one line when anything was removed."""
    removed: list[Path] = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            match = TEMP_NAME.match(entry.name)
            try:
                if match is None or not entry.is_file(follow_symlinks=False) or not abandoned(entry, match):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
            removed.append(Path(entry.path))
    if removed:
        log.warning("Removed %d temporary file(s) left by an interrupted run in %s: %s", len(removed), job_dir,
                    ", ".join(str(p.relative_to(job_dir)) for p in removed))
    return removed
