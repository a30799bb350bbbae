"""Messages to the user on stderr (warnings, notes): one message = one line, for the CLI and library alike."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # one message = one line, even in narrow terminals


def warn(message: str) -> None:
    """A yellow `warning:` line; the run goes on."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def note(message: str) -> None:
    """A plain line of progress or information."""
    console.print(message, highlight=False)


def report_warnings(data) -> None:
    """Show a dataset's warnings (duplicates and the like) without stopping."""
    for warning in data.warnings:
        warn(warning)
