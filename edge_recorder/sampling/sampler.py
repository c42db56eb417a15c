"""One fixed-rate loop per I2C bus: drain every sensor's FIFO, timestamp, push to its ring.

Faults stay local to one sensor: a failed read is retried on the next tick; after
``MAX_CONSECUTIVE_ERRORS`` the sensor is marked down and re-probed with exponential
backoff, without delaying the other sensors on the bus. The time without data is
recorded as a :class:`~edge_recorder.documents.Gap` (and counted as dropped), and
the sensor is picked up again when it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_recorder.clock import monotonic_ns
from edge_recorder.documents import Gap
from edge_recorder.log import describe
from edge_recorder.sampling.ring import SampleRing
from edge_recorder.sampling.timebase import FrameTimebase
from edge_recorder.sensors.base import ImuDriver

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 3
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 1.0  # a probe is one 1-byte read: cheap enough to try every second
DRIVER_ERROR_LOG_S = 60.0  # the same driver failure is logged again at most this often
POLL_MIN_S = 0.005
POLL_MAX_S = 0.1
PENDING_POLLS = 4  # a restarted FIFO with no frame after this many polls: the loss ends


@dataclass
class SensorCounters:
    """What ``P/status`` reports per sensor."""

    state: str = "starting"  # starting | up | down
    samples: int = 0
    dropped: int = 0
    gaps: int = 0
    bus_errors: int = 0
    driver_errors: int = 0  # reads that failed past the bus (decoding); their data is a gap
    overflows: int = 0
    fifo_peak_pct: float = 0.0  # fullest the FIFO was at a read, % of its frames (100: overflow)
    rate_hz: float = 0.0
    last_error: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__, rate_hz=round(self.rate_hz, 3),
                    fifo_peak_pct=round(self.fifo_peak_pct, 1))


@dataclass
class PendingLoss:
    """A loss whose end is not known yet: the FIFO restarted empty somewhere inside one
    call (the driver's reset in the read that found an overflow; the chip's configuration
    when it came back), between ``earliest_ns`` (the call began) and ``latest_ns`` (it
    returned). The thread may have been stopped anywhere in there (a CPU quota, SIGSTOP):
    what the chip sampled after the restart waits in the FIFO for the next read, whose
    frames say when the loss ended."""

    earliest_ns: int
    latest_ns: int
    reason: str
    announce: bool = True  # log the loss when it is counted (else the caller logged it)


@dataclass
class SensorChannel:
    """One configured sensor: its driver, its ring and its sampling state."""

    name: str
    driver: ImuDriver
    ring: SampleRing
    timebase: FrameTimebase = field(init=False)
    counters: SensorCounters = field(default_factory=SensorCounters)
    consecutive_errors: int = 0
    down_since_ns: int | None = None
    retry_at_ns: int = 0
    backoff_s: float = BACKOFF_MIN_S
    last_ts_ns: int | None = None  # accounted for up to here: last sample, or a gap's end
    pending: PendingLoss | None = None  # a loss whose gap's end is not known yet
    driver_error_logged: str = ""  # the driver failure last logged, and when (sampler clock)
    driver_error_logged_ns: int = 0
    driver_errors_unlogged: int = 0
    next_poll_ns: int = 0  # the sampler's clock; see BusSampler.poll_once
    poll_ns: int = 0  # this sensor's own poll interval (its FIFO's, once identified)

    def __post_init__(self) -> None:
        self.timebase = FrameTimebase(1e9 / self.driver.rate_hz)
        self.counters.rate_hz = self.driver.rate_hz
        self.fifo_frames = self.driver.fifo_frames  # set again when the chip is identified
        self.poll_ns = int(poll_interval_s([self.driver]) * 1e9)

    @property
    def period_ns(self) -> float:
        return self.timebase.period_ns


POLL_FILL_FRACTION = 1 / 3


def poll_interval_s(drivers: list[ImuDriver]) -> float:
    """A third of the time the fastest-filling FIFO takes to fill, within 5–100 ms.

    Fewer, larger reads cost less per sample (each transaction is a syscall and three
    bytes of addressing on the wire); a third leaves room for two late polls in a row.
    """
    fill_s = min(d.fifo_frames / d.rate_hz for d in drivers)
    return max(POLL_MIN_S, min(POLL_MAX_S, fill_s * POLL_FILL_FRACTION))


class BusSampler:
    """Owns one bus and every sensor on it; the only thread that touches that bus."""

    def __init__(
        self,
        bus_name: str,
        sensors: list[SensorChannel],
        *,
        clock: Callable[[], int] = monotonic_ns,  # monotonic: a wall-clock step is no gap
        interval_s: float | None = None,
    ) -> None:
        self.bus_name = bus_name
        self.sensors = sensors
        self.clock = clock
        for s in sensors:  # the drivers time their count reads on it; frames are stamped on it
            s.driver.clock = clock
        self._auto_interval = not interval_s
        self.interval_s = interval_s or poll_interval_s([s.driver for s in sensors])
        self.last_loop_s = time.monotonic()  # heartbeat for the watchdog
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one tick (tests drive this directly with a fake clock) ---------------------
    def poll_once(self) -> None:
        """Service every sensor that is due. The bus ticks at the interval of its
        fastest-filling FIFO; with the interval chosen automatically, a sensor whose FIFO
        holds longer is read only on the ticks its own interval needs (a deep FIFO next to
        a shallow one is not read at the shallow one's pace: fewer transactions, wake-ups
        and CPU for the same samples)."""
        now = self.clock()
        tick_ns = int(self.interval_s * 1e9)
        for sensor in self.sensors:
            if self._auto_interval and sensor.counters.state == "up":
                if now < sensor.next_poll_ns:
                    continue
                # due again on the first tick at or after (own interval − half a tick)
                sensor.next_poll_ns = now + sensor.poll_ns - tick_ns // 2
            self._service(sensor)
        self.last_loop_s = time.monotonic()

    def _service(self, s: SensorChannel) -> None:
        now = self.clock()
        if s.counters.state != "up":
            if s.down_since_ns is not None:
                self._outage_so_far(s, now)
            if now >= s.retry_at_ns:
                self._bring_up(s, now)
            return
        try:
            read = s.driver.read_fifo()
        except OSError as exc:
            self._bus_error(s, exc, now)
            return
        except Exception as exc:  # past the bus: what the read drained is gone
            self._driver_error(s, exc, now)
            return
        s.consecutive_errors = 0
        lost, frames = read.lost_frames, read.frames
        counters = s.counters
        fill_pct = 100.0 if read.overflowed else 100.0 * (frames + lost) / s.fifo_frames
        if fill_pct > counters.fifo_peak_pct:
            counters.fifo_peak_pct = min(100.0, fill_pct)
        if read.overflowed:
            s.counters.overflows += 1
            # lost from the last instant accounted for until the driver's reset, somewhere
            # in this read (another overflow before the next frame: on to its reset)
            # when the driver's reset let the FIFO store again (as it timed it, else
            # somewhere in this read)
            restart = read.restart_window_ns or (now, self.clock())
            self._restarted(s, *restart, "fifo_overflow", sampling_on=True)
        elif s.pending is not None and not (frames or lost) and \
                now - s.pending.latest_ns > max(2 * s.period_ns, PENDING_POLLS * s.poll_ns):
            self._end_pending(s, s.pending.latest_ns)  # restarted, yet no frame since
        if frames or lost:
            taken = frames + lost
            # frames the driver dropped (unpaired, invalid) took a slot in the chip's
            # timeline; assume the earliest
            # stamped from when the count was latched (as the driver timed it), not from
            # ``now``: the thread may have been stopped in between
            first, step = s.timebase.stamp(taken, *(read.count_window_ns or (now, now)))
            if s.pending is not None:  # the loss ended just before the first of these
                self._end_pending(s, first - step)
            if lost:
                self._add_gap(s, Gap(first, first + (lost - 1) * step + 1, lost,
                                     "invalid_samples"))
            if frames:
                s.ring.append(first + lost * step, step, frames, read.raw, read.layout)
                counters.samples += frames
                counters.rate_hz = s.timebase.rate_hz
            s.last_ts_ns = first + (lost + frames - 1) * step

    def _restarted(self, s: SensorChannel, earliest_ns: int, latest_ns: int,
                   reason: str, *, sampling_on: bool = False, announce: bool = True) -> None:
        """The FIFO restarted empty between ``earliest_ns`` and ``latest_ns``: what was
        sampled since the last instant accounted for until then is lost; when exactly, the
        next frames say (:class:`PendingLoss`). Frames after it are a new timeline.
        ``sampling_on``: only the FIFO restarted, the chip sampled on at its pace (an
        overflow's reset), so its first frame after was sampled within a period of it, and
        the last one lost within a period before."""
        if s.last_ts_ns is None:
            s.last_ts_ns = earliest_ns - int(s.period_ns)
        if s.pending is not None:  # one gap, named for what began it
            reason = s.pending.reason
        restarted = None
        if sampling_on:
            restarted = (earliest_ns, latest_ns)
            earliest_ns -= int(s.period_ns)
        s.pending = PendingLoss(earliest_ns, latest_ns, reason, announce)
        s.timebase.skip(0, until_ns=earliest_ns, restarted=restarted)
        # a session that must close before the next frame comes takes the loss at its
        # most (never fewer); the next frame replaces it with the loss as it was
        s.ring.set_provisional_gap(self._loss_gap(s, s.last_ts_ns, latest_ns, reason))

    def _outage_so_far(self, s: SensorChannel, now: int) -> None:
        """While a sensor does not answer, the ring lists its outage so far as a loss still
        running: a session that closes meanwhile counts it (its gap ends at the session's
        end), instead of ending short without a word. Its own gap replaces it when the
        sensor is back."""
        assert s.down_since_ns is not None
        s.ring.set_provisional_gap(self._loss_gap(s, s.down_since_ns, now,
                                                  "sensor_unreachable"))

    def _end_pending(self, s: SensorChannel, end_ns: int) -> None:
        """Count the pending loss up to ``end_ns``, kept within the call that restarted
        the FIFO. The timebase was resynchronised at the restart already."""
        pending, s.pending = s.pending, None
        assert pending is not None and s.last_ts_ns is not None
        end_ns = min(max(end_ns, pending.earliest_ns), pending.latest_ns)
        self._record_loss(s, s.last_ts_ns, end_ns, pending.reason, pending=True,
                          announce=pending.announce)

    def _settle(self, s: SensorChannel) -> None:
        """Before another loss is counted from the last instant accounted for: a loss
        still pending ends where it latest can (the FIFO is about to be lost anyway)."""
        if s.pending is not None:
            self._end_pending(s, s.pending.latest_ns)

    def _record_loss(self, s: SensorChannel, since_ns: int, now: int, reason: str,
                     *, announce: bool = True, pending: bool = False) -> int:
        """Everything sampled after ``since_ns`` until ``now`` is lost: count it, mark a gap.

        ``since_ns`` is the last instant already accounted for (a sample or the end of the
        previous gap), so repeated losses while starved of CPU never count a stretch twice,
        and nothing sampled after ``now`` is stamped inside the gap. ``pending``: this is
        a :class:`PendingLoss` ending (its gap replaces the ring's provisional one; the
        frames after it are already numbered, so the timebase keeps its count). Returns
        how many."""
        gap = self._loss_gap(s, since_ns, now, reason)
        lost = gap.lost if gap is not None else 0
        # no later frame is stamped before ``now``
        s.timebase.skip(0 if pending else lost, resync=not pending, until_ns=now)
        self._add_gap(s, gap, settles_pending=pending)
        if gap is not None and announce:
            log.warning("sensor %s: %d samples lost (%s)", s.name, lost, reason)
        s.last_ts_ns = max(now, s.last_ts_ns or now)
        return lost

    @staticmethod
    def _loss_gap(s: SensorChannel, since_ns: int, until_ns: int, reason: str) -> Gap | None:
        """What was sampled after ``since_ns`` until ``until_ns``, at the chip's period, as
        a gap (None: not one sample)."""
        lost = round((until_ns - since_ns) / s.period_ns)
        return Gap(int(since_ns + s.period_ns), until_ns, lost, reason) if lost > 0 else None

    @staticmethod
    def _add_gap(s: SensorChannel, gap: Gap | None, *, settles_pending: bool = False) -> None:
        if gap is not None:
            s.counters.dropped += gap.lost
            s.counters.gaps += 1
        s.ring.add_gap(gap, settles_pending=settles_pending)

    def _bus_error(self, s: SensorChannel, exc: OSError, now: int) -> None:
        s.counters.bus_errors += 1
        s.consecutive_errors += 1
        s.counters.last_error = str(exc)
        if s.consecutive_errors < MAX_CONSECUTIVE_ERRORS:
            return  # the FIFO keeps the data; the next tick retries
        log.error("sensor %s on bus %s stopped answering (%s); re-probing",
                  s.name, self.bus_name, exc)
        s.counters.state = "down"
        self._settle(s)
        s.down_since_ns = s.last_ts_ns if s.last_ts_ns is not None else now
        s.retry_at_ns = now
        s.backoff_s = BACKOFF_MIN_S

    def _driver_error(self, s: SensorChannel, exc: Exception, now: int) -> None:
        """A read that failed past the bus (e.g. decoding a burst the driver had already
        drained): empty the FIFO so the next read starts on a frame boundary, and count
        everything since the last accounted instant as a ``driver_error`` gap. Logged
        when the failure differs from the last one logged, else once a minute at most:
        a failure on every poll must not flood the journal."""
        s.counters.driver_errors += 1
        reason = describe(exc)
        s.counters.last_error = reason
        reset_error = ""
        restart = None
        try:
            s.driver.reset_fifo()
            restart = s.driver.restart_window()
        except OSError as bus_exc:  # the FIFO keeps filling; the next read finds it full
            s.counters.bus_errors += 1
            reset_error = f"; resetting its FIFO failed too ({describe(bus_exc)})"
        self._settle(s)
        if restart is not None and restart[0] >= now:  # this reset's, as the driver timed it
            # lost until the FIFO stored again; the next read's first frame says when
            if s.last_ts_ns is None:
                s.last_ts_ns = now - int(s.period_ns)
            gap = self._loss_gap(s, s.last_ts_ns, restart[1], "driver_error")
            self._restarted(s, *restart, "driver_error", sampling_on=True, announce=False)
            lost, lost_is = (gap.lost if gap is not None else 0), "up to "
        else:
            since = s.last_ts_ns if s.last_ts_ns is not None else now - int(s.period_ns)
            lost = self._record_loss(s, since, self.clock(), "driver_error", announce=False)
            lost_is = ""
        if reason == s.driver_error_logged and \
                now - s.driver_error_logged_ns < DRIVER_ERROR_LOG_S * 1e9:
            s.driver_errors_unlogged += 1
            return
        repeats = (f" (the previous failure repeated {s.driver_errors_unlogged} more times)"
                   if s.driver_errors_unlogged else "")
        log.error("sensor %s: driver %s failed reading its FIFO: %s; %s%d samples lost "
                  "(driver_error), FIFO reset%s%s", s.name, s.driver.name, reason, lost_is,
                  lost, reset_error, repeats)
        s.driver_error_logged, s.driver_error_logged_ns = reason, now
        s.driver_errors_unlogged = 0

    def _bring_up(self, s: SensorChannel, now: int) -> None:
        error: OSError | None = None
        for _attempt in range(MAX_CONSECUTIVE_ERRORS):  # one glitch must not cost a backoff
            try:
                s.driver.start()
                break
            except OSError as exc:
                s.counters.bus_errors += 1
                error = exc
        else:
            assert error is not None
            if str(error) != s.counters.last_error:
                log.error("sensor %s: %s (retrying every %.1f s at most)",
                          s.name, error, BACKOFF_MAX_S)
            s.counters.last_error = str(error)
            s.retry_at_ns = now + int(s.backoff_s * 1e9)
            s.backoff_s = min(BACKOFF_MAX_S, s.backoff_s * 2)
            if s.down_since_ns is None:  # never came up: the time until it does is a gap too
                s.down_since_ns = now
            s.counters.state = "down"
            return
        if s.down_since_ns is not None:
            # lost until the chip's FIFO started, inside start(): the next frames say when
            s.last_ts_ns = s.down_since_ns
            self._restarted(s, now, self.clock(), "sensor_unreachable")
            # it may be another chip now (swapped while down): its own period is learnt anew
            s.timebase.forget_period()
            log.info("sensor %s is up (%s)", s.name, s.driver.variant)
        else:
            log.info("sensor %s: %s on bus %s at 0x%02x, %g Hz", s.name, s.driver.variant,
                     self.bus_name, s.driver.address, s.driver.rate_hz)
        s.counters.state = "up"
        s.fifo_frames = s.driver.fifo_frames  # the identified variant's
        s.poll_ns = int(poll_interval_s([s.driver]) * 1e9)
        if self._auto_interval:  # the identified variant's FIFO size decides
            self.interval_s = poll_interval_s([c.driver for c in self.sensors])
        s.consecutive_errors = 0
        s.down_since_ns = None
        s.backoff_s = BACKOFF_MIN_S
        s.counters.last_error = ""

    # --- the worker -------------------------------------------------------------------
    def start(self) -> None:
        """Bring the sensors up (so a session opened next has data from its first
        instant), then sample in a thread."""
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.bus_name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a driver bug must not kill sampling silently
                log.exception("sampler for bus %s: unexpected error", self.bus_name)
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:
                next_tick = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
