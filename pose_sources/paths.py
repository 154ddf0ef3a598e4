"""File listing helpers shared by the readers: natural ordering and image discovery."""

from __future__ import annotations

import glob as _glob
import os
import re
from collections.abc import Iterable
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str | Path) -> tuple:
    """Sort key that orders embedded numbers by value, so `frame_2` sorts before `frame_10`.

    Digit runs become (0, int) and text runs (1, str) so that comparisons never mix int and
    str, whatever the names look like.
    """
    name = Path(path).name
    parts = _DIGITS.split(name.lower())
    key = []
    for i, part in enumerate(parts):
        if i % 2:  # odd positions of re.split with one capture group are the digit runs
            key.append((0, int(part), len(part)))
        elif part:
            key.append((1, part, 0))
    return tuple(key), name


def sorted_naturally(paths: Iterable[str | Path]) -> list[Path]:
    return sorted((Path(p) for p in paths), key=natural_key)


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


MAX_GLOB_MATCHES = 10000
"""A pose sequence of more pictures than this is a mistyped pattern, not a job."""


def _fixed_prefix(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = []
    for part in Path(pattern).expanduser().parts:
        if is_glob(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def glob_files(pattern: str, max_matches: int = MAX_GLOB_MATCHES) -> list[Path]:
    """Files matching ``pattern`` (``**`` recursive), in natural order; bounded.

    A recursive pattern must start inside a specific folder: ``/**/*.png`` or ``~/**/*.png``
    would walk the whole file system (or home) and hang the job. More than ``max_matches``
    matches is refused too.
    """
    from .errors import PoseSourceError

    if "**" in pattern:
        base = _fixed_prefix(pattern).absolute()
        if len(base.parts) < 3 or base == Path.home():
            raise PoseSourceError(
                f"{pattern!r}: a recursive '**' pattern starting at {base} would search a whole file system tree; "
                "start it in the folder that holds the pose images, e.g. 'poses/**/*.png'")
    matches: list[str] = []
    for p in _glob.iglob(os.path.expanduser(pattern), recursive=True):
        matches.append(p)
        if len(matches) > max_matches:
            raise PoseSourceError(f"{pattern!r} matches more than {max_matches} files; narrow the pattern")
    return sorted_naturally(p for p in matches if Path(p).is_file())


def files_with_suffix(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted_naturally(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith(".")
    )
