"""Record ``duration_s`` every ``every_s``, aligned to the clock (condition monitoring).

Starts fall on multiples of ``every_s`` since the UNIX epoch on the wall clock (every
300 s = on the five minutes). The waiting is on the monotonic clock and re-planned at least
every :data:`REPLAN_S`, so a wall-clock step moves the next start to the new clock's
multiple: the first one at least half an interval (monotonic) after the previous one. So a
step back does not fire the same multiple twice, and a step forward skips no start (a
multiple the step jumped over is started at once, late rather than never). A start is
skipped, with a log line, while the previous interval session is still open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_recorder.clock import Clock
from edge_recorder.config import IntervalTriggerConfig
from edge_recorder.recording.events import Event, Reply, StartRequested, Trigger

log = logging.getLogger(__name__)

REPLAN_S = 1.0  # a wall-clock step moves the plan within this long


def next_aligned_ns(now_ns: int, every_s: float) -> int:
    """The first multiple of ``every_s`` strictly after ``now_ns`` (ns since the epoch)."""
    every_ns = int(every_s * 1e9)
    return (now_ns // every_ns + 1) * every_ns


class IntervalTrigger:
    def __init__(
        self,
        settings: IntervalTriggerConfig,
        submit: Callable[[Event], None],
        is_open: Callable[[str], bool],
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.submit = submit
        self.is_open = is_open
        self.clock = clock or Clock()
        self.skipped = 0
        self.fired = 0
        self.last_fired_mono_ns: int | None = None
        self._planned: int | None = None  # monotonic instant of the next start
        self._planned_offset = 0
        self._last_session: str | None = None
        self.last_loop_s = time.monotonic()  # heartbeat for the watchdog
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due_mono_ns(self) -> int:
        """The monotonic instant of the next start: the first wall-clock multiple of
        ``every_s`` at least half an interval after the previous start (the first after now
        before any start). After a forward step it may already have passed: start at once."""
        every_ns = int(self.settings.every_s * 1e9)
        offset = self.clock.offset_ns()
        if self.last_fired_mono_ns is None:
            due_wall = next_aligned_ns(self.clock.mono_ns() + offset, self.settings.every_s)
        else:
            earliest_wall = self.last_fired_mono_ns + every_ns // 2 + offset
            due_wall = next_aligned_ns(earliest_wall - 1, self.settings.every_s)
        return due_wall - offset

    def fire(self, at_ns: int, slot_ns: int | None = None) -> None:
        """Start a session at monotonic instant ``at_ns`` (unless the last is still open);
        ``slot_ns``, the multiple's own instant, when it starts late."""
        self.last_fired_mono_ns = at_ns if slot_ns is None else slot_ns
        self.fired += 1
        if self._last_session is not None and self.is_open(self._last_session):
            self.skipped += 1
            log.info("interval trigger: skipped, session %s is still open", self._last_session)
            return

        def remember(reply: Reply) -> None:
            if reply.ok:
                self._last_session = reply.session_id
            else:
                log.warning("interval trigger: session not started: %s",
                            reply.error.message if reply.error else "")

        s = self.settings
        self.submit(StartRequested(Trigger("interval", f"every {s.every_s:g} s"),
                                   labels=s.labels, duration_s=s.duration_s, at_ns=at_ns,
                                   reply=remember))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="interval-trigger", daemon=True)
        self._thread.start()

    def tick(self) -> float:
        """Start the session that is due, if one is; seconds to wait before the next tick.
        Re-plans whenever the wall clock stepped since the plan was made."""
        offset = self.clock.offset_ns()
        if self._planned is None or offset != self._planned_offset:
            self._planned, self._planned_offset = self.due_mono_ns(), offset
        now = self.clock.mono_ns()
        if now < self._planned:
            return min((self._planned - now) / 1e9, REPLAN_S)
        self.fire(max(self._planned, now - int(REPLAN_S * 1e9)), self._planned)
        self._planned = None
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_loop_s = time.monotonic()
            self._stop.wait(self.tick())

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
