"""Terminal progress bar for runs started from the CLI (off for library use and deployments)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

_enabled = False


def enable_terminal_progress(enabled: bool = True) -> None:
    """Show a frames progress bar on stderr for flows run in this process."""
    global _enabled
    _enabled = enabled


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def write(self, text: str, file=None) -> None:
        pass


@contextmanager
def frame_bar(total: int, initial: int = 0, desc: str = "frames"):
    if not _enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="frame", file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
