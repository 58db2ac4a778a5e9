"""Progress of long jobs (indexing, embedding, training) on stderr: a rich progress bar on a terminal, and
elsewhere (logs, CI, pipes) a plain line every few seconds, or nothing."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console


class Progress:
    """``progress(done, total)`` as work gets done; a context manager, or ``close()`` at the end.

    ``lines=False`` keeps it quiet without a terminal (training writes its own metrics log).
    """

    def __init__(
        self, description: str, *, total: int | None = None, done: int = 0, enabled: bool = True, lines: bool = True
    ):
        self.description = description
        self.enabled = enabled
        self.lines = lines
        self.console = Console(stderr=True)
        self._bar = None
        self._last = 0.0
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=done, status="")

    def __call__(self, done: int, total: int | None = None, status: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total or self._bar.tasks[0].total, status=status)
        elif self.lines and (time.monotonic() - self._last > 2 or done == total):
            self._last = time.monotonic()
            self.console.print(
                f"{self.description}: {done}/{total}" + (f" {status}" if status else ""), highlight=False
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
