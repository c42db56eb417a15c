"""The recorder: opens, feeds, stops and finalises sessions; one thread, fed by events.

A session is a window over the shared rings: it starts ``pre_trigger_s`` before its
trigger and ends at its stop time; every sample in the window goes into its MCAP file,
copied from the rings (so overlapping sessions hold the very same samples) every half
second, when the file is flushed and fsync'd, in one message per sensor. On stop, the
recorder waits until every ring has passed the stop time (or a short grace), writes
the manifest and hands the file to the store's outbox.

Time (see :mod:`edge_recorder.clock`): rings, windows, deadlines and flushes are on the
monotonic clock. A session is written on the wall clock as mapped when it opened; if the
wall clock steps before it is finalised, the finished file is re-stamped once, so the whole
session (samples, ``started_at``, ``stopped_at``, gaps) is on the clock as it is after the
step. Steps are listed in the manifest's ``clock`` object.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_recorder import __version__
from edge_recorder.clock import Clock
from edge_recorder.config import SessionConfig
from edge_recorder.errors import StoreFull
from edge_recorder.log import describe
from edge_recorder.recording.events import (
    UNSET,
    Event,
    JourneyRequested,
    Rejected,
    Reply,
    SettingsChanged,
    StartRequested,
    StatusRequested,
    StopRequested,
    Trigger,
    error,
    ok,
)
from edge_recorder.recording.ids import iso_utc, new_journey_id, new_session_id
from edge_recorder.recording.labels import cardinality_warning, check_labels, merge_labels
from edge_recorder.recording.recovery import salvage_session
from edge_recorder.recording.store import DeviceStore, is_disk_full
from edge_recorder.sampling.ring import Block, SampleRing
from edge_recorder.sessionfile import ChannelInfo, SessionWriter, encode_block, restamp

log = logging.getLogger(__name__)

PUMP_INTERVAL_S = 0.1  # while a session is open
IDLE_WAKE_S = 1.0  # with none open: wall-clock watch and heartbeat only
# Under a CPU quota (a cgroup's, as systemd's CPUQuota= sets) the kernel stops every thread
# of the daemon once the group has used its quota for the period, samplers included, and
# the MPU-6050's FIFO holds only 73 ms at 1 kHz. So there a burst of the recorder's (a
# start, a flush, a finalise, events back to back) is cut into steps: once the thread has
# used PACE_BURST_S of CPU since it last waited, it waits before its next step, long enough
# that the burst averages PACE_SHARE of the quota (at most PACE_MAX_PAUSE_S): a 3 % quota
# grants 1.2 ms every 40 ms, the samplers need about half of it, a burst gets a third. Never
# less than PACE_MIN_DUTY of a core: under a quota too small for the samplers anyway,
# slower bursts would only hold back replies and finalising sessions.
# Without a quota (or one of a core or more) nothing is paced: the samplers take the CPU
# from a burst by their priority, and the GIL changes hands within 0.5 ms.
PACE_BURST_S = 0.0002
PACE_SHARE = 1 / 3
PACE_MIN_DUTY = 0.01
PACE_MAX_PAUSE_S = 0.25
FLUSH_INTERVAL_NS = 500_000_000  # + up to ~0.2 s in the sampler and pump: < 1 s lost on a crash
STOP_GRACE_NS = 1_000_000_000  # wait at most this long for samples past the stop time
SESSION_RESERVE_BYTES = 1 << 20
_WAKE = object()  # put on the event queue by close(): the thread stops without waiting


@dataclass(frozen=True)
class SensorSource:
    """What the recorder knows of a sensor: its identity and its ring."""

    name: str
    driver: str
    rate_hz: float
    ring: SampleRing


@dataclass
class OpenSession:
    session_id: str
    labels: tuple[str, ...]
    journey_id: str | None
    trigger: Trigger
    trigger_ns: int  # instants on the monotonic clock
    window_start_ns: int
    deadline_ns: int | None
    deadline_reason: str
    writer: SessionWriter
    cursors: dict[str, int]
    samples: dict[str, int]
    overrun: dict[str, int]
    warnings: list[str]
    offset_ns: int  # wall − mono the file is being written with
    stop_ns: int | None = None
    stop_reason: str | None = None
    last_flush_ns: int = 0
    # sensors whose ring has been read up to the session's end: nothing after it is this
    # session's, so it is not read again (an eviction there is no loss of this session's)
    read_to_end: set[str] = field(default_factory=set)

    @property
    def end_ns(self) -> int | None:
        """Where the window ends as far as known: the stop once marked, else the deadline."""
        return self.stop_ns if self.stop_ns is not None else self.deadline_ns

    def summary(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "labels": list(self.labels),
                "journey_id": self.journey_id,
                "started_at": iso_utc(self.window_start_ns + self.offset_ns),
                "trigger": {"source": self.trigger.source, "detail": self.trigger.detail},
                "stopping": self.stop_ns is not None}


class Recorder:
    def __init__(
        self,
        settings: SessionConfig,
        *,
        device_id: str,
        sources: list[SensorSource],
        store: DeviceStore,
        buffer_s: float,
        journey_id: str | None,
        clock: Clock | None = None,
        on_complete: Callable[[dict[str, Any]], None] = lambda manifest: None,
        status: Callable[[], Any] | None = None,  # the daemon's StatusDocument
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.sources = sources
        self.store = store
        self.buffer_s = buffer_s
        # a short ring must be emptied more often than every flush, or it evicts unwritten
        self._write_interval_ns = min(FLUSH_INTERVAL_NS, int(buffer_s * 1e9 / 4))
        self.journey_id = journey_id
        self.clock = clock or Clock()
        self.on_complete = on_complete
        self.status = status or self.snapshot
        self.sessions: dict[str, OpenSession] = {}
        self.completed = 0
        self.warnings: list[str] = []
        self.last_loop_s = time.monotonic()
        self._pump_error = ""
        self._events: queue.Queue[Any] = queue.Queue()  # events, or _WAKE
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._burst_from_s = 0.0  # the worker's CPU time (thread_time) when it last woke
        self.cpu_limit: float | None = None  # the daemon's CPU quota in cores (None: none)

    # --- the inbound interface (any thread) -----------------------------------------
    def submit(self, event: Event) -> None:
        self._events.put(event)

    def snapshot(self) -> dict[str, Any]:
        """Open sessions and the current journey, safe to call from any thread."""
        with self._lock:
            return {"recording": [s.summary() for s in self.sessions.values()],
                    "journey_id": self.journey_id, "sessions_completed": self.completed}

    # --- event handling (recorder thread) -------------------------------------------
    def handle(self, event: Event) -> None:
        reply: Reply
        try:
            if isinstance(event, StartRequested):
                reply = self._start(event)
            elif isinstance(event, StopRequested):
                reply = self._request_stop(event)
            elif isinstance(event, JourneyRequested):
                reply = self._set_journey(event)
            elif isinstance(event, StatusRequested):
                reply = ok(status=self.status())
            elif isinstance(event, SettingsChanged):
                reply = self._apply_settings(event)
            else:
                raise Rejected("invalid_command", f"{type(event).__name__} is not handled by "
                               "the recorder")
        except Rejected as exc:
            reply = error(exc.code, exc.message)
        except Exception as exc:  # never let one request kill the recorder
            log.exception("recorder: failed to handle %s", type(event).__name__)
            reply = error("internal_error", f"the recorder failed: {describe(exc)}")
        if event.reply is not None:
            try:
                event.reply(reply)
            except Exception:
                log.exception("recorder: reply callback failed")

    def _start(self, ev: StartRequested) -> Reply:
        s = self.settings
        now = self.clock.mono_ns()
        at = ev.at_ns if ev.at_ns is not None else now
        if len(self.sessions) >= s.max_concurrent:
            raise Rejected("too_many_sessions",
                           f"{len(self.sessions)} sessions are already recording, the limit "
                           f"(session.max_concurrent); stop one first")
        labels = merge_labels(s.labels, ev.labels)
        problem = check_labels(labels, s.allowed_labels)
        if problem:
            code = "label_not_allowed" if "not allowed" in problem else "invalid_labels"
            raise Rejected(code, problem)
        pre = s.pre_trigger_s if ev.pre_trigger_s is None else ev.pre_trigger_s
        if pre > self.buffer_s:
            raise Rejected("pre_trigger_too_long",
                           f"pre_trigger_s {pre:g} reaches further back than the ring buffer "
                           f"holds; the limit is buffer.seconds = {self.buffer_s:g}")
        duration = s.duration_s if ev.duration_s is UNSET else ev.duration_s
        if duration is not None and duration > s.max_duration_s:
            raise Rejected("duration_too_long",
                           f"duration_s {duration:g} is longer than session.max_duration_s "
                           f"({s.max_duration_s:g})")
        if duration is not None:
            deadline, why = at + int(duration * 1e9), "duration"
        else:
            deadline, why = at + int(s.max_duration_s * 1e9), "max_duration"
        journey = self.journey_id if ev.journey_id is UNSET else ev.journey_id
        warnings = [w for w in map(cardinality_warning, labels) if w]
        for w in warnings:
            log.warning("%s", w)
        offset = self.clock.offset_ns()
        session_id = new_session_id(at + offset)
        window_start = at - int(pre * 1e9)
        header = {"session_id": session_id, "device_id": self.device_id,
                  "labels": list(labels), "journey_id": journey,
                  "started_at": iso_utc(window_start + offset),
                  "window_start_ns": window_start + offset,  # on the file's time base
                  # what recovery needs to say which clock a salvaged file is on
                  "clock": {"synced": self.clock.synced(), "source": self.clock.source,
                            "offset_ns": offset, "boot_id": self.clock.boot_id},
                  "trigger": {"source": ev.trigger.source, "detail": ev.trigger.detail},
                  "pre_trigger_s": pre,
                  "sensors": [{"name": x.name, "driver": x.driver, "rate_hz": x.rate_hz}
                              for x in self.sources]}
        try:
            path = self.store.begin(session_id, header, SESSION_RESERVE_BYTES)
            self._pace()
            writer = SessionWriter(path, [ChannelInfo(x.name, x.driver, x.rate_hz)
                                          for x in self.sources])
        except StoreFull as exc:
            raise Rejected("store_full", str(exc)) from exc
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.store.discard_recording(session_id)
            raise Rejected("store_full", f"the disk is full ({describe(exc)}) and nothing "
                           "published is left to delete; free disk space") from exc
        session = OpenSession(
            session_id=session_id, labels=labels, journey_id=journey, trigger=ev.trigger,
            trigger_ns=at, window_start_ns=window_start, deadline_ns=deadline,
            deadline_reason=why, writer=writer,
            cursors={x.name: x.ring.seq_at(window_start) for x in self.sources},
            samples={x.name: 0 for x in self.sources},
            overrun={x.name: 0 for x in self.sources}, warnings=warnings, offset_ns=offset,
            last_flush_ns=now)
        with self._lock:
            self.sessions[session_id] = session
            self.warnings = (self.warnings + warnings)[-10:]
        log.info("session %s started by %s%s, labels [%s], journey %s", session_id,
                 ev.trigger.source, f" ({ev.trigger.detail})" if ev.trigger.detail else "",
                 ", ".join(labels), journey)
        if warnings:
            return ok(session_id=session_id, journey_id=journey, labels=labels,
                      warnings=tuple(warnings))
        return ok(session_id=session_id, journey_id=journey, labels=labels)

    def _set_journey(self, ev: JourneyRequested) -> Reply:
        journey = new_journey_id(self.device_id, self.clock.wall_ns()) if ev.new_auto \
            else ev.journey_id
        with self._lock:
            previous, self.journey_id = self.journey_id, journey
        log.info("journey is now %s (was %s)", journey, previous)
        return ok(journey_id=journey, previous_journey_id=previous)

    def _apply_settings(self, ev: SettingsChanged) -> Reply:
        """New defaults for sessions started from now on; open sessions keep theirs."""
        self.settings = ev.settings
        if ev.new_auto_journey or ev.journey_id is not UNSET:
            return self._set_journey(JourneyRequested(journey_id=ev.journey_id,
                                                      new_auto=ev.new_auto_journey))
        return ok()

    def _request_stop(self, ev: StopRequested) -> Reply:
        now = self.clock.mono_ns()
        at = ev.at_ns if ev.at_ns is not None else now
        if ev.session_id is not None:
            session = self.sessions.get(ev.session_id)
            if session is None or session.stop_ns is not None:
                raise Rejected("no_such_session",
                               f"no session {ev.session_id!r} is recording; see the status "
                               "command for the open ones")
            targets = [session]
        else:
            targets = [s for s in self.sessions.values() if s.stop_ns is None]
        for s in targets:
            self._mark_stop(s, at, ev.reason)
        return ok(stopped=tuple(s.session_id for s in targets))

    def _mark_stop(self, s: OpenSession, at_ns: int, reason: str) -> None:
        """Stop at ``at_ns``, or at the deadline if that came first (the pump that would
        have marked it had not run yet): a window never outlasts its deadline."""
        if s.deadline_ns is not None and at_ns >= s.deadline_ns:
            at_ns, reason = s.deadline_ns, s.deadline_reason
        s.stop_ns = max(s.window_start_ns, at_ns)
        s.stop_reason = reason

    # --- moving samples (recorder thread) ---------------------------------------------
    def pump(self) -> None:
        """Copy new samples into every open session; stop and finalise those that are due."""
        now = self.clock.mono_ns()
        self.clock.offset_ns()  # keeps watching the wall clock for steps
        # blocks shared by overlapping sessions (on one time base)
        encoded: dict[tuple[str, int, int, int], bytes] = {}
        for s in list(self.sessions.values()):
            self._pace()
            try:
                self._pump_session(s, now, encoded)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._close_on_full_disk(s, exc)

    def _pump_session(self, s: OpenSession, now: int,
                      encoded: dict[tuple[str, int, int, int], bytes]) -> None:
        """One session's share of :meth:`pump`."""
        if s.stop_ns is None and s.deadline_ns is not None and now >= s.deadline_ns:
            self._mark_stop(s, s.deadline_ns, s.deadline_reason)
        # Samples wait in the ring and go to the file once per flush, a whole flush's worth
        # in one message per sensor: the per-message and per-decode costs are paid twice a
        # second, not every pump. Nothing is lost by waiting: until the flush made them
        # durable they were only in memory either way. A stopping session writes every pump.
        write = s.stop_ns is not None or now - s.last_flush_ns >= self._write_interval_ns
        caught_up = True
        for src in self.sources:
            if s.stop_ns is not None:
                # looked at before reading: the sampler counts a loss before it appends the
                # frames after it, so once a frame past the stop was there, the read below
                # gets every frame and loss before the stop (after it, one may have slipped
                # in between the read and the look)
                newest = src.ring.newest_t_ns()
                caught_up &= newest is not None and newest >= s.stop_ns
            if write:
                self._pace()
                self._write_new(s, src, encoded)
        if s.stop_ns is not None and (caught_up or now - s.stop_ns > STOP_GRACE_NS):
            self._finalise(s)
        else:
            if write:  # two steps: compressing the chunk, then the fdatasync
                self._pace()
                s.writer.end_chunk()
                self._pace()
                s.writer.sync()  # durable up to here: a crash loses at most ~1 s
                s.last_flush_ns = now
            # recovery's end of a crash gap, on the session's time base (that of its samples)
            self.store.note_alive(s.session_id, now + s.offset_ns)

    def _write_new(self, s: OpenSession, src: SensorSource,
                   encoded: dict[tuple[str, int, int, int], bytes]) -> None:
        """Append what ``src``'s ring holds past the session's cursor to its file, up to the
        session's end: the deadline too, before the stop is marked (the pump read its clock
        before pausing between steps, _pace, and the sampler went on appending meanwhile)."""
        if src.name in s.read_to_end:
            return
        end_ns = s.end_ns
        # looked at before reading: a sample at or past the end there means the read below
        # gets (or counts as evicted) everything before the end
        newest = src.ring.newest_t_ns() if end_ns is not None else None
        blocks, missed = src.ring.read(s.cursors[src.name], s.window_start_ns, end_ns)
        if missed:
            s.overrun[src.name] += missed
            log.warning("session %s: %d %s samples were evicted from the ring before "
                        "they could be written", s.session_id, missed, src.name)
        if blocks:  # one message per sensor per write: MCAP framing costs per message
            block = Block.join(blocks)
            key = (src.name, block.first_seq, block.end_seq, s.offset_ns)
            data = encoded.get(key)
            if data is None:
                data = encoded[key] = encode_block(block, s.offset_ns)
            s.writer.write(src.name, block.first_t_ns + s.offset_ns, data)
            s.samples[src.name] += len(block)
            s.cursors[src.name] = block.end_seq
        elif missed:
            s.cursors[src.name] = src.ring.oldest_seq
        if newest is not None and end_ns is not None and newest >= end_ns:
            s.read_to_end.add(src.name)

    def _finalise(self, s: OpenSession) -> None:
        assert s.stop_ns is not None and s.stop_reason is not None
        offset = self.clock.offset_ns()  # the session's time base: the clock as it is now
        sensors = []
        for src in self.sources:
            # each gap as far as it lies in the window, with its share of the loss, so the
            # gaps listed add up to what is counted as dropped
            w_start, w_end = s.window_start_ns, s.stop_ns
            gaps: list[dict[str, Any]] = [
                dict(g.to_dict(), start_ns=max(g.start_ns, w_start) + offset,
                     end_ns=min(g.end_ns, w_end) + offset,
                     lost=_overlap_lost(g.start_ns, g.end_ns, g.lost, w_start, w_end))
                for g in src.ring.gaps_between(w_start, w_end)]
            gaps = [g for g in gaps if g["lost"]]
            sensors.append({"name": src.name, "driver": src.driver, "rate_hz": src.rate_hz,
                            "samples": s.samples[src.name],
                            "dropped": sum(g["lost"] for g in gaps) + s.overrun[src.name],
                            "gaps": gaps})
        manifest: dict[str, Any] = {
            "session_id": s.session_id, "device_id": self.device_id,
            "labels": list(s.labels), "journey_id": s.journey_id,
            "started_at": iso_utc(s.window_start_ns + offset),
            "stopped_at": iso_utc(s.stop_ns + offset),
            "duration_s": round((s.stop_ns - s.window_start_ns) / 1e9, 6),
            "stop_reason": s.stop_reason,
            "trigger": {"source": s.trigger.source, "detail": s.trigger.detail},
            "pre_trigger_s": round((s.trigger_ns - s.window_start_ns) / 1e9, 6),
            "sensors": sensors, "clock": self._clock_record(s, offset),
            "format": "mcap", "recorder_version": __version__,
        }
        if s.warnings:
            manifest["warnings"] = s.warnings
        try:
            self._pace()
            s.writer.finish(manifest)
            self._pace()
            if offset != s.offset_ns:  # the wall clock stepped: one time base for all of it
                restamp(s.writer.path, offset - s.offset_ns, manifest,
                        on_progress=self._heartbeat)
                self._pace()
            manifest = self.store.complete(s.session_id, manifest)
        except OSError as exc:
            if is_disk_full(exc):
                self._close_on_full_disk(s, exc)
                return
            log.error("session %s: could not finalise its file (%s); it stays in "
                      "recording/ and is recovered at the next start", s.session_id,
                      describe(exc))
            s.writer.abort()
            with self._lock:
                del self.sessions[s.session_id]
            return
        with self._lock:
            del self.sessions[s.session_id]
            self.completed += 1
        log.info("session %s complete: %s, %.1f s, %s", s.session_id, s.stop_reason,
                 manifest["duration_s"],
                 ", ".join(f"{x['name']} {x['samples']} samples ({x['dropped']} dropped)"
                           for x in sensors))
        self.on_complete(manifest)

    def _heartbeat(self) -> None:
        self.last_loop_s = time.monotonic()

    def _clock_record(self, s: OpenSession, offset_ns: int) -> dict[str, Any]:
        """The manifest's ``clock``: sync state, the session's time base, the steps seen
        from the start of its window until now (all of them moved it to this base)."""
        return {"synced": self.clock.synced(), "source": self.clock.source,
                "offset_ns": offset_ns, "boot_id": self.clock.boot_id,
                "steps": [x.as_dict() for x in self.clock.steps_since(s.window_start_ns)]}

    def _close_on_full_disk(self, s: OpenSession, exc: OSError) -> None:
        """The disk filled up under an open session. Its file is cut where the last flush
        left it, room is made (published sessions go), and the session is closed as
        recovery closes a crashed one, with ``stop_reason: store_full`` and a gap from its
        last durable sample. If even that cannot be written, it stays in ``recording/``
        and the next start recovers it."""
        log.error("session %s: the disk is full (%s); closing it with what was written, "
                  "stop_reason store_full", s.session_id, describe(exc))
        s.writer.abort()
        with self._lock:
            del self.sessions[s.session_id]
        try:
            self.store.make_room(0, disk_full=True)
        except StoreFull as full:
            log.error("store: %s", full)
        try:
            manifest = salvage_session(self.store, s.session_id, stop_reason="store_full")
        except (OSError, ValueError, KeyError) as again:
            log.error("session %s: cannot be closed now (%s); it stays in recording/ and is "
                      "recovered at the next start", s.session_id, describe(again))
            return
        if manifest is not None:
            with self._lock:
                self.completed += 1
            self.on_complete(manifest)

    # --- the worker ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Pump every :data:`PUMP_INTERVAL_S` while a session is open; with none open, only
        wait for an event (handled at once), waking once every :data:`IDLE_WAKE_S` to read
        the wall clock (steps) and beat the heartbeat."""
        next_pump = 0.0
        while not self._stop.is_set():
            idle = not self.sessions
            wait = IDLE_WAKE_S if idle else max(0.0, next_pump - time.monotonic())
            try:
                event = self._events.get(timeout=wait)
                self._burst_from_s = time.thread_time()
                if event is not _WAKE:
                    self.handle(event)
                    self._pace()
            except queue.Empty:
                self._burst_from_s = time.thread_time()
                if idle:
                    self.clock.offset_ns()  # keeps watching the wall clock for steps
            if idle:
                self.last_loop_s = time.monotonic()
                # a session just started is first pumped one interval later, not at once
                next_pump = self.last_loop_s + PUMP_INTERVAL_S
                continue
            pumped = True
            if time.monotonic() >= next_pump:
                pumped = self._pump_logged()
                next_pump = time.monotonic() + PUMP_INTERVAL_S
            if pumped:  # a pump failing every round is no progress: the watchdog sees it
                self.last_loop_s = time.monotonic()

    def _pace(self) -> None:
        """Between two steps of a burst, on the recorder's own thread, under a CPU quota
        below one core (:attr:`cpu_limit`): once it has used :data:`PACE_BURST_S` of CPU
        since it last waited, wait so that the burst averages :data:`PACE_SHARE` of the
        quota, or :data:`PACE_MIN_DUTY` of a core if more (calls from other threads, a
        test's or ``close()``'s, are not paced)."""
        limit = self.cpu_limit
        if limit is None or limit >= 1 or self._thread is None or \
                threading.current_thread() is not self._thread:
            return
        used_s = time.thread_time() - self._burst_from_s
        if used_s < PACE_BURST_S:
            return
        duty = max(PACE_MIN_DUTY, limit * PACE_SHARE)
        self._stop.wait(min(PACE_MAX_PAUSE_S, used_s * (1 / duty - 1)))
        self._burst_from_s = time.thread_time()

    def _pump_logged(self) -> bool:
        """Pump; a failure is logged once with its reason (not every 100 ms), and again
        only when the reason changes; recovery is logged too."""
        try:
            self.pump()
        except Exception as exc:
            if describe(exc) != self._pump_error:
                self._pump_error = describe(exc)
                log.exception("recorder: pump failed; retrying every %.1f s", PUMP_INTERVAL_S)
            return False
        if self._pump_error:
            log.info("recorder: pumping works again (it failed with %s)", self._pump_error)
            self._pump_error = ""
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, reason: str = "shutdown", timeout_s: float = 3.0) -> None:
        """Stop every open session with ``reason`` and finalise them; then stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._events.put(_WAKE)
            self._thread.join(timeout_s)
            self._thread = None
        while not self._events.empty():  # answer what is still queued
            event = self._events.get_nowait()
            if event is not _WAKE:
                self.handle(event)
        now = self.clock.mono_ns()
        for s in self.sessions.values():
            if s.stop_ns is None:
                self._mark_stop(s, now, reason)
        deadline = time.monotonic() + STOP_GRACE_NS / 1e9 + 0.5
        while self.sessions and time.monotonic() < deadline:
            self.pump()
            if self.sessions:
                time.sleep(0.02)
        for s in list(self.sessions.values()):  # grace passed: finalise with what we have
            self._finalise(s)


def _overlap_lost(g_start: int, g_end: int, lost: int, w_start: int, w_end: int) -> int:
    """The share of a gap's lost samples that fell inside a session's window."""
    span = max(1, g_end - g_start)
    inside = max(0, min(g_end, w_end) - max(g_start, w_start))
    return round(lost * inside / span)
