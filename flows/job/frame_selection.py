"""Which frames of a job to render: ``--frames 0,4,8`` or ``--frames 3-5`` (a preview, a retry).

A run that renders a subset renders those frames only and stitches what the job folder holds; a
later full run renders the rest (the frame store has the others).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from flows.job.model import JobInputError

FIELD = "frames"


def parse_frames(text: str, field: str = FIELD) -> list[int]:
    """``"0,4,8"`` -> [0, 4, 8]; ``"3-5"`` -> [3, 4, 5]; both mixed, in order, each once."""
    indices: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise JobInputError(field, f"{part!r} is not a frame index or a range; write e.g. 0,4,8 or 3-5") from None
        if hi < lo:
            raise JobInputError(field, f"the range {part!r} runs backwards; write {hi}-{lo}")
        indices += [i for i in range(lo, hi + 1) if i not in indices]
    if not indices:
        raise JobInputError(field, f"{text!r} names no frame; write e.g. 0,4,8 or 3-5")
    return indices


def select_frames(wanted: Optional[Iterable[int] | str], count: int, field: str = FIELD) -> Optional[list[int]]:
    """The sorted frame indices to render out of ``count`` (None: all of them); every index checked."""
    if wanted is None:
        return None
    indices = parse_frames(wanted, field) if isinstance(wanted, str) else list(wanted)
    if not indices:
        return None
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise JobInputError(field, f"{i!r} is not a frame index; give whole numbers such as 0,4,8")
        if not 0 <= i < count:
            raise JobInputError(field, f"frame {i} does not exist; the job has {count} frames (0-{count - 1})")
    return sorted(set(indices))


__all__ = ["parse_frames", "select_frames"]
