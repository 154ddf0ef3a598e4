"""Versions of a named job: ``<output.folder>/<name>/latest`` and ``versions.json``.

Job folders are named by content, so re-running a job name with other settings writes a new
folder and keeps the old one. This module remembers which folders a name produced, oldest first,
and points ``latest`` at the newest, so a user finds the current result by name and can go back.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from flows.jobdir import frames_io, layout
from flows.jobdir.layout import VersionsFolder, folder_name


def read_versions(folder: VersionsFolder) -> list[dict]:
    """The recorded versions, oldest first ([] when there are none or the file is unreadable)."""
    try:
        entries = json.loads(folder.versions.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("job_hash"), str)]


def record_version(output_folder: str | os.PathLike, name: str, job_hash: str) -> list[str]:
    """Record ``job_hash`` as the newest version of ``name`` and point ``latest`` at its folder.
    Returns the job hashes of the earlier versions, oldest first."""
    folder = VersionsFolder.of(output_folder, name)
    with frames_io.folder_lock(folder.path):
        earlier = [e for e in read_versions(folder) if e["job_hash"] != job_hash]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        frames_io.write_json_atomic(folder.versions, earlier + [{"job_hash": job_hash, "finished": now}])
        _point_latest(folder, Path("..") / folder_name(job_hash))
    return [e["job_hash"] for e in earlier]


def forget_versions(output_folder: str | os.PathLike, removed: set[str]) -> None:
    """Drop the versions whose job folders (by folder name) were removed, in every versions folder
    of ``output_folder``; ``latest`` then points at the newest left, or is removed with the last."""
    output = Path(output_folder)
    for path in (p for p in output.iterdir() if p.is_dir() and not layout.is_job_folder_name(p.name)):
        folder = VersionsFolder(path)
        if not folder.versions.is_file():
            continue
        with frames_io.folder_lock(folder.path):
            entries = read_versions(folder)
            left = [e for e in entries if folder_name(e["job_hash"]) not in removed]
            if left == entries:
                continue
            frames_io.write_json_atomic(folder.versions, left)
            if left:
                _point_latest(folder, Path("..") / folder_name(left[-1]["job_hash"]))
            else:
                folder.latest.unlink(missing_ok=True)


def _point_latest(folder: VersionsFolder, target: Path) -> None:
    # A new link under a temporary name, renamed over the old one: readers see one or the other.
    tmp = layout.temp_path(folder.latest, secrets.token_hex(6))
    os.symlink(target, tmp)
    try:
        os.replace(tmp, folder.latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["forget_versions", "read_versions", "record_version"]
