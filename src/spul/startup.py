"""The first instructions of the `spul` command (no heavy imports here): `spul serve` must survive a SIGHUP
that comes while Python is still importing the command line, before `serve_cmd` installs its handler."""

from __future__ import annotations

import signal

_held: list[int] = []  # the SIGHUPs received between start-up and serve_cmd's own handler


def hold_sighup(argv: list[str]) -> None:
    """For `spul serve`, note a SIGHUP (serve re-reads its prompt for it once running) instead of dying."""
    if argv[1:2] == ["serve"] and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: _held.append(1))


def held_sighups() -> int:
    """How many SIGHUPs came during start-up (while `hold_sighup`'s handler was in place)."""
    return len(_held)
