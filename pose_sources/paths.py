"""File listing helpers shared by the readers: natural ordering and image discovery."""

from __future__ import annotations

import glob as _glob
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


def glob_files(pattern: str) -> list[Path]:
    return sorted_naturally(p for p in _glob.glob(pattern, recursive=True) if Path(p).is_file())


def files_with_suffix(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted_naturally(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith(".")
    )
