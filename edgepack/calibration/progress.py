"""Progress bars for data passes that take more than a moment: rich, on stderr, only on a terminal.

One shared stderr console, so a bar can nest inside the CLI's status spinner.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

_console = None


def stderr_console():
    """The process-wide rich console on stderr (the CLI's spinner and these bars share it)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _console


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, *, delay: float = 0.5) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; the bar appears only once ``delay`` seconds have passed, and is cleared at the end.

    Off when stderr is not a terminal or edgepack's log level hides warnings (``-q``).
    """
    console = stderr_console()
    if not console.is_terminal or not logging.getLogger("edgepack").isEnabledFor(logging.WARNING):
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    start, done = time.monotonic(), 0
    bar: Progress | None = None
    task = None

    def advance(n: int) -> None:
        nonlocal bar, task, done
        done += n
        if bar is None:
            if time.monotonic() - start < delay:
                return
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), console=console, transient=True)
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.stop()
