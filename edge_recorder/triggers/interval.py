"""Record ``duration_s`` every ``every_s``, aligned to the clock (condition monitoring).

Starts fall on multiples of ``every_s`` since the UNIX epoch on the wall clock (every
300 s = on the five minutes). The waiting is on the monotonic clock and re-planned whenever
the wall clock steps (checked at least every :data:`REPLAN_S`). After a start at multiple
``M`` the next is ``M + every_s`` on the clock as it is then, so a step neither fires a
multiple twice nor skips one: a step back delays it (by at most one interval), a step forward
brings it nearer, or starts it at once if the step jumped just past it. A step too large for
that (back by more than an interval, forward by more than half of one) cannot keep both the
wall times and the cadence: the trigger keeps the cadence and starts at the next multiple of
the new clock. A start is skipped, with a log line, while the previous interval session is
still open.
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
        self.last_label_ns: int | None = None  # the wall-clock multiple of the last start
        self._planned: tuple[int, int] | None = None  # the next start: (mono, multiple)
        self._planned_offset = 0
        self._last_session: str | None = None
        self.last_loop_s = time.monotonic()  # heartbeat for the watchdog
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> tuple[int, int]:
        """The next start: ``(monotonic instant, wall-clock multiple)``. The multiple after the
        last one, where it is no further than half an interval in the past and two intervals
        after the last start; else (a large step, or no start yet) the first multiple after
        now on the current clock."""
        every_ns = int(self.settings.every_s * 1e9)
        offset = self.clock.offset_ns()
        now = self.clock.mono_ns()
        if self.last_label_ns is not None and self.last_fired_mono_ns is not None:
            label = self.last_label_ns + every_ns
            at = label - offset
            if now - every_ns // 2 <= at <= self.last_fired_mono_ns + 2 * every_ns:
                return at, label
        label = next_aligned_ns(now + offset, self.settings.every_s)
        return label - offset, label

    def fire(self, at_ns: int, slot_ns: int | None = None, label_ns: int | None = None) -> None:
        """Start a session at monotonic instant ``at_ns`` (unless the last is still open);
        ``slot_ns`` is the multiple's own instant when it starts late, ``label_ns`` the
        multiple on the wall clock."""
        self.last_fired_mono_ns = at_ns if slot_ns is None else slot_ns
        self.last_label_ns = label_ns if label_ns is not None else \
            self.clock.to_wall(self.last_fired_mono_ns)
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
            self._planned, self._planned_offset = self.due(), offset
        at, label = self._planned
        now = self.clock.mono_ns()
        if now < at:
            return min((at - now) / 1e9, REPLAN_S)
        self.fire(max(at, now - int(REPLAN_S * 1e9)), at, label)
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
