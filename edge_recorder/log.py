"""Logging: one line per event; journald priorities as ``<N>`` prefixes under systemd.

Every logged exception says what it was: without ``--debug`` the traceback is left out
but the line still ends in ``: OSError: [Errno 28] No space left on device``, so an
operator reading the journal of a device they cannot reach knows what broke.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def describe(exc: BaseException) -> str:
    """``OSError: [Errno 28] No space left on device``: the type and the message."""
    return f"{type(exc).__name__}: {exc}"


class _Formatter(logging.Formatter):
    """Without ``debug``: no traceback, the exception's type and message on the same line."""

    def __init__(self, fmt: str, *, journal: bool, debug: bool) -> None:
        super().__init__(fmt)
        self.journal = journal
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if not self.debug and exc is not None:
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"{record.getMessage()}: {describe(exc)}"
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
        text = super().format(record)
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}" if self.journal else text


def setup_logging(level: str = "INFO", *, debug: bool = False) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) without timestamps, with priorities.

    Tracebacks are only shown with ``debug``; otherwise an exception adds its type and
    message to the line (:func:`describe`).
    """
    handler = logging.StreamHandler(sys.stderr)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(name)s: %(message)s" if journal else \
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    handler.setFormatter(_Formatter(fmt, journal=journal, debug=debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if debug else level.upper())
    logging.getLogger("mcap").setLevel(logging.WARNING)
