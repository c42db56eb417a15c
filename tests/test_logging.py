"""Logs that explain: every caught exception says its type and message; tracebacks only
with --debug (issue 12, item 12)."""

from __future__ import annotations

import errno
import logging

import pytest

from edge_recorder.log import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_a_caught_enospc() -> None:
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        logging.getLogger("edge_recorder.delivery.mqtt").exception(
            "mqtt: handler for %s failed", "edge-recorder/x/cmd")


@pytest.mark.parametrize("journal", [False, True])
def test_a_caught_exception_is_one_line_with_its_type_and_message(capsys, monkeypatch, journal):
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("INFO")
    _log_a_caught_enospc()
    err = capsys.readouterr().err
    assert "mqtt: handler for edge-recorder/x/cmd failed: OSError: [Errno 28] No space left " \
           "on device" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("<3>") == journal


def test_debug_keeps_the_traceback(capsys):
    setup_logging("INFO", debug=True)
    _log_a_caught_enospc()
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "OSError: [Errno 28] No space left on device" in err
