"""Progress on a terminal for the CLI's long steps: export, publish, IPFS add, the demo set-up.

Everything is drawn on stderr with ``rich`` and only when stderr is a terminal: in CI, in a
log or through a pipe nothing is written, so the output stays what the command prints.

* :func:`byte_bars` is the ``registry.ipfs_add.ProgressFactory`` of ``publish`` to an IPFS
  node: a bar with bytes, rate and time left for each file of ``MIN_BYTES`` or more.
* :func:`steps` is a bar over named steps: the step callback ``registry.export`` and
  ``registry.publish`` take (``progress=``), called ``(description, index, total)``.

The registry never imports this module: the callbacks are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MIN_BYTES = 4 << 20
"""Files smaller than this get no bar (they take a moment)."""

REFRESH_PER_SECOND = 10


def shows_progress(stream: TextIO) -> bool:
    """Whether progress is drawn on ``stream``: only on a terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _console(stream: TextIO) -> Console:
    return Console(file=stream, force_terminal=True, highlight=False)


class ByteBar:
    """One file's upload; the ``registry.ipfs_add.Progress`` protocol."""

    def __init__(self, stream: TextIO, name: str, total: int) -> None:
        self._progress = Progress(
            TextColumn("adding {task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=_console(stream),
            refresh_per_second=REFRESH_PER_SECOND,
        )
        self._task = self._progress.add_task(name, total=total)
        self._progress.start()

    def update(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.refresh()
        self._progress.stop()


class NoProgress:
    """Nothing drawn (not a terminal, or a small file)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, description: str, index: int, total: int) -> None:
        pass


def byte_bars(stream: TextIO) -> Callable[[str, int | None], ByteBar | NoProgress]:
    """``(name, total bytes) -> bar``: a bar for files of ``MIN_BYTES`` or more on a
    terminal, nothing otherwise."""
    tty = shows_progress(stream)

    def make(name: str, total: int | None) -> ByteBar | NoProgress:
        if not tty or total is None or total < MIN_BYTES:
            return NoProgress()
        return ByteBar(stream, name, total)

    return make


class Steps:
    """A bar over named steps; called as ``(description, index, total)`` (the registry's
    step callback) when step ``index`` of ``total`` starts."""

    def __init__(self, stream: TextIO, title: str) -> None:
        self._progress = Progress(
            TextColumn("{task.fields[title]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=_console(stream),
            refresh_per_second=REFRESH_PER_SECOND,
        )
        self._task: TaskID = self._progress.add_task("", total=None, title=title)
        self._progress.start()

    def __call__(self, description: str, index: int, total: int) -> None:
        """Step ``index`` (1-based) of ``total`` is under way (thread-safe)."""
        self._progress.update(self._task, total=total, completed=index - 1, description=description)

    def finish(self) -> None:
        """Every step done; the bar stays on the screen, full."""
        total = self._progress.tasks[0].total or 1
        self._progress.update(self._task, total=total, completed=total, description="done")
        self._progress.stop()

    def stop(self) -> None:
        """Stop drawing, the bar left where it is (a step failed)."""
        self._progress.stop()


@contextmanager
def steps(stream: TextIO, title: str) -> Iterator[Steps | NoProgress]:
    """A :class:`Steps` bar on a terminal for the ``with`` block, else :class:`NoProgress`.

    The bar is completed when the block ends normally and left where it stopped on an error.
    """
    if not shows_progress(stream):
        yield NoProgress()
        return
    bar = Steps(stream, title)
    try:
        yield bar
    except BaseException:
        bar.stop()
        raise
    bar.finish()
