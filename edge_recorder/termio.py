"""Command-line output helpers: progress on a terminal, output files that appear whole.

- :func:`progress_bar`: a one-line percentage on stderr, only when stderr is a terminal
  and only once the work has taken longer than :data:`PROGRESS_AFTER_S` (quick commands
  and scripts see nothing).
- :func:`atomic_output`: write to a hidden temporary beside the target and rename it into
  place on success; on any failure the temporary is removed, so a half-written export is
  never left under the name asked for.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

PROGRESS_AFTER_S = 2.0  # say nothing for work shorter than this
PROGRESS_EVERY_S = 0.2


class _Progress:
    def __init__(self, label: str, stream: TextIO, clock: Callable[[], float]) -> None:
        self.label = label
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.last_shown = 0.0
        self.shown = False

    def __call__(self, fraction: float) -> None:
        now = self.clock()
        if now - self.started < PROGRESS_AFTER_S or now - self.last_shown < PROGRESS_EVERY_S:
            return
        self.last_shown = now
        self.shown = True
        elapsed = now - self.started
        eta = f", {elapsed / fraction - elapsed:.0f} s left" if fraction > 0.01 else ""
        self.stream.write(f"\r{self.label}: {fraction * 100:5.1f} %{eta}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")  # clear the line for what comes next
            self.stream.flush()


@contextmanager
def progress_bar(label: str, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[Callable[[float], None]]:
    """A ``progress(fraction)`` callable; silent unless ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        yield lambda fraction: None
        return
    bar = _Progress(label, stream, clock)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def atomic_output(path: Path, mode: str = "wb", **kw: Any) -> Iterator[IO[Any]]:
    """A file object whose contents appear at ``path`` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **kw) as f:
            yield f
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
