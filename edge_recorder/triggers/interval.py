"""Record ``duration_s`` every ``every_s``, aligned to the clock (condition monitoring).

Starts fall on multiples of ``every_s`` since the UNIX epoch (every 300 s = on the
five minutes). A start is skipped, with a log line, while the previous interval session
is still open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_recorder.config import IntervalTriggerConfig
from edge_recorder.recording.events import Event, Reply, StartRequested, Trigger

log = logging.getLogger(__name__)


def next_aligned_ns(now_ns: int, every_s: float) -> int:
    every_ns = int(every_s * 1e9)
    return (now_ns // every_ns + 1) * every_ns


class IntervalTrigger:
    def __init__(
        self,
        settings: IntervalTriggerConfig,
        submit: Callable[[Event], None],
        is_open: Callable[[str], bool],
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.submit = submit
        self.is_open = is_open
        self.clock = clock
        self.skipped = 0
        self._last_session: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fire(self, at_ns: int) -> None:
        if self._last_session is not None and self.is_open(self._last_session):
            self.skipped += 1
            log.info("interval trigger: skipped, session %s is still open", self._last_session)
            return

        def remember(reply: Reply) -> None:
            if reply.get("ok"):
                self._last_session = reply.get("session_id")
            else:
                log.warning("interval trigger: session not started: %s",
                            reply.get("error", {}).get("message"))

        s = self.settings
        self.submit(StartRequested(Trigger("interval", f"every {s.every_s:g} s"),
                                   labels=s.labels, duration_s=s.duration_s, at_ns=at_ns,
                                   reply=remember))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="interval-trigger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            due = next_aligned_ns(self.clock(), self.settings.every_s)
            if self._stop.wait(max(0.0, (due - self.clock()) / 1e9)):
                return
            self.fire(due)

    def close(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
