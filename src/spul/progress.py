"""One progress helper used by all long loops: a rich bar on a terminal, periodic lines in a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_EVERY_S = 30.0  # when stderr is no terminal (nohup, CI), print a status line this often
_silenced = False  # set by `-q`: reaches the loops that no show_progress argument is passed down to


def silence_progress(silenced: bool = True) -> bool:
    """Turn every later progress bar of this process into a no-op (the CLI's `-q`), or back; returns the
    setting it replaced."""
    global _silenced
    previous, _silenced = _silenced, silenced
    return previous


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield an `advance(n)` callable that reports progress (a no-op when disabled or silenced)."""
    if not enabled or _silenced:
        yield lambda n: None
    elif sys.stderr.isatty():
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
    else:
        yield _LogProgress(description, total)


class _LogProgress:
    """Plain progress lines for logs: `unlearn 120/400 (30%) 95 s, ~222 s left`."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.done = description, total, 0
        self.start = self.last = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY_S or self.done >= self.total:
            self.last = now
            elapsed = now - self.start
            left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            percent = 100 * self.done / max(self.total, 1)
            status = f"{self.done}/{self.total} ({percent:.0f}%) {elapsed:.0f} s, ~{left:.0f} s left"
            print(f"{self.description} {status}", file=sys.stderr, flush=True)
