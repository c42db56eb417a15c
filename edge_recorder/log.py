"""Logging: one line per event; journald priorities as ``<N>`` prefixes under systemd."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str = "INFO", *, debug: bool = False) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) without timestamps, with priorities.

    Tracebacks are only shown with ``debug``; otherwise an exception logs its message only.
    """
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        fmt: logging.Formatter = _JournalFormatter("%(name)s: %(message)s")
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if not debug:
        fmt.formatException = lambda ei: ""  # type: ignore[method-assign]
        fmt.formatStack = lambda si: ""  # type: ignore[method-assign, assignment]
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if debug else level.upper())
    logging.getLogger("mcap").setLevel(logging.WARNING)
