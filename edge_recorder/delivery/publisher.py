"""Delivers the store's sessions: outbox → broker → collector, until the collector has them.

The publisher knows no recorder; it only sees the store. A session is sent as
``P/sessions/{id}/part/{n}`` (QoS 1, each at most ``part_bytes``) with a window of parts in
flight; only when every part is acknowledged is the manifest sent, and only when the
manifest is acknowledged does the store move the session to ``published/``. A dropped
connection just pauses the loop; unacknowledged parts are sent again (same bytes, same
topic), so the collector sees duplicates at worst, never a gap.

A broker's acknowledgement means "I have it", not "it is stored": a broker killed before its
next autosave, or one that restarts while the collector is offline, loses acknowledged
messages. So the collector publishes a **receipt** on ``P/sessions/{id}/stored`` once it
has stored a session (and again for one it already holds), and a published session waits
for it (``delivery.require_receipt``). When none arrives within ``delivery.receipt_timeout_s``
the whole session is published again (same ids, same bytes), with the wait doubling each
time up to :data:`RECEIPT_BACKOFF_MAX_S`, until one does; then the store moves it to
``stored/``. The collector's part-level ``resend`` command and these receipt timeouts go
through the same routine, :meth:`Publisher._resend`.

A session that can never be sent as it is (invalid manifest, missing, truncated or unreadable file)
is quarantined by the store to ``failed/``; the sessions after it go out as usual.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from edge_recorder.delivery.mqtt import Delivery, Message, MqttLink
from edge_recorder.documents import Receipt
from edge_recorder.errors import StoreFull
from edge_recorder.recording.store import (
    OUTBOX,
    PUBLISHED,
    STORED,
    DamagedSession,
    DeviceStore,
    cannot_write,
    is_disk_full,
    is_unreadable,
)

log = logging.getLogger(__name__)

WINDOW_PARTS = 16
ACK_TIMEOUT_S = 20.0
IDLE_RESCAN_S = 2.0
RESUME_NOTE_EVERY_S = 1.0  # how often a long publish records how far it got
RECEIPT_BACKOFF_MAX_S = 900.0  # the wait for a receipt doubles up to this (or the timeout)
RECEIPT_CHECK_EVERY_S = 1.0
RESEND_HOLDOFF_S = 5.0  # one session is retransmitted at most once this often; requests wait
# At most this many overdue sessions are queued again per check, and none while earlier
# ones are still queued: a collector offline for days must not turn into a resend flood.
RECEIPT_RESEND_BATCH = 4
MAX_PUBLISH_ERRORS = 3  # a session that cannot be read this often in a row is quarantined
# Any other error (a full or read-only disk, ...) says nothing about the session: it is tried
# again after a wait that doubles from IDLE_RESCAN_S up to this, and never quarantined.
PUBLISH_BACKOFF_MAX_S = 300.0


class Publisher:
    def __init__(
        self,
        store: DeviceStore,
        link: MqttLink,
        topic_root: str,
        *,
        part_bytes: int,
        require_receipt: bool = True,
        receipt_timeout_s: float = 60.0,
        on_change: Callable[[str], None] = lambda session_id: None,
        prepare: Callable[[str], object] = lambda session_id: None,
        idle: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_change(session_id)``: a session changed state (published, stored,
        quarantined). ``prepare(session_id)`` runs before a session's first part is sent
        (re-stamping a session recorded before the clock was synchronised); ``idle()`` on
        every turn of the loop, connected or not (re-stamping them all once synced). ``clock``:
        monotonic seconds, for the receipt deadlines."""
        self.store = store
        self.link = link
        self.topic_root = topic_root
        self.device_id = topic_root.rsplit("/", 1)[-1]
        self.part_bytes = part_bytes
        self.require_receipt = require_receipt
        self.receipt_timeout_s = receipt_timeout_s
        self.on_change = on_change
        self.clock = clock
        self.prepare = prepare
        self.idle = idle
        self.published = 0
        self.resent = 0
        self.stored = 0
        self._resends: dict[str, set[int] | None] = {}  # id → parts (None: all), in order
        self._resent_at: dict[str, float] = {}  # id → when its last retransmission began
        self._receipts: deque[Receipt] = deque()
        self._due: dict[str, tuple[float, int]] = {}  # published id → (resend at, attempts)
        self._published_at: dict[str, float] = {}  # published id → when (``clock``)
        self._started_at = clock()  # sessions published before this run count from here
        self._errors: dict[str, int] = {}  # id → its files could not be read, times in a row
        self._retry_at: dict[str, tuple[float, int]] = {}  # id → (not before, failures)
        self._next_receipt_check = 0.0
        self._lock = threading.Lock()
        self.last_loop_s = time.monotonic()  # heartbeat for the watchdog
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Something new is in the outbox (or a receipt or resend request came)."""
        self._wake.set()

    def topic(self, session_id: str, leaf: str) -> str:
        return f"{self.topic_root}/sessions/{session_id}/{leaf}"

    @property
    def receipt_topic(self) -> str:
        return f"{self.topic_root}/sessions/+/stored"

    def use_link(self, link: MqttLink) -> None:
        """Publish through ``link`` (a reload may replace it); receipts come in through it
        (the link renews the subscription on every reconnect)."""
        self.link = link
        if self.require_receipt:
            link.subscribe(self.receipt_topic, self.on_receipt, qos=1)

    # --- receipts (the network thread hands them over) ----------------------------------
    def on_receipt(self, message: Message) -> None:
        try:
            receipt = Receipt.from_json(message.payload)
        except ValueError as exc:  # DocumentError: bounded, then every field checked
            log.warning("publisher: ignoring a malformed receipt on %s: %s: %s", message.topic,
                        type(exc).__name__, exc)
            return
        if message.topic != self.topic(receipt.session_id, "stored") or \
                receipt.device_id != self.device_id:
            log.warning("publisher: ignoring a receipt on %s for session %r of device %r: it "
                        "does not match its topic", message.topic, receipt.session_id,
                        receipt.device_id)
            return
        with self._lock:
            self._receipts.append(receipt)
        self.wake()

    def _take_receipts(self) -> None:
        while self._receipts:
            with self._lock:
                r = self._receipts.popleft()
            state = self.store.find(r.session_id)
            if state == STORED:
                log.debug("session %s: another receipt; already stored", r.session_id)
                continue
            if state not in (OUTBOX, PUBLISHED):
                log.info("publisher: receipt for session %s, which this device does not hold "
                         "(%s); ignored", r.session_id, state or "unknown here")
                continue
            try:
                manifest = self.store.manifest(r.session_id, state)
            except FileNotFoundError:  # the recorder's thread made room with it meanwhile
                log.info("publisher: receipt for session %s, deleted to make room before it "
                         "came; ignored", r.session_id)
                continue
            if (r.sha256, r.bytes) != (manifest.get("sha256"), manifest.get("bytes")):
                log.error("session %s: the collector's receipt is for different content "
                          "(%d bytes, sha256 %s…; ours: %s bytes, %s…); still awaiting a "
                          "matching one", r.session_id, r.bytes, r.sha256[:12],
                          manifest.get("bytes"), str(manifest.get("sha256"))[:12])
                continue
            try:
                self.store.mark_stored(r.session_id)
            except ValueError:  # (as above, between the look and the move)
                log.info("publisher: receipt for session %s, deleted to make room before it "
                         "was taken; ignored", r.session_id)
                continue
            self._due.pop(r.session_id, None)
            with self._lock:
                self._resends.pop(r.session_id, None)
            self.stored += 1
            log.info("session %s stored by the collector%s", r.session_id,
                     " (it already had it)" if r.duplicate else "")
            self.on_change(r.session_id)

    def _check_receipts_due(self) -> None:
        """Publish again every session whose receipt is overdue (oldest first, a few at a
        time); back off each time."""
        now = self.clock()
        if not self.require_receipt or now < self._next_receipt_check:
            return
        self._next_receipt_check = now + RECEIPT_CHECK_EVERY_S
        published = self.store.ids(PUBLISHED)
        for sid in set(self._due) - set(published):
            del self._due[sid]
        batch = 0 if self._resends else RECEIPT_RESEND_BATCH
        for sid in published:
            due = self._due.get(sid)
            if due is None:  # just published, or published before this run started
                self._due[sid] = (now + self.receipt_timeout_s, 0)
            elif now >= due[0] and batch > 0:
                batch -= 1
                attempts = due[1] + 1
                log.warning("session %s: no receipt from the collector; publishing it again "
                            "(attempt %d)", sid, attempts)
                self._queue_resend(sid, None)
                wait = min(self.receipt_timeout_s * 2 ** attempts,
                           max(self.receipt_timeout_s, RECEIPT_BACKOFF_MAX_S))
                self._due[sid] = (now + wait, attempts)

    def awaiting_receipt(self) -> dict[str, float]:
        """Published sessions still awaiting the collector's receipt: how many, and the age
        in seconds of the oldest (0 when none, or when receipts are off). Ages are on
        ``clock`` (monotonic: a step of the wall clock changes none); a session published
        before this run started counts from its start."""
        if not self.require_receipt:
            return {"sessions": 0, "oldest_s": 0.0}
        published = self.store.ids(PUBLISHED)
        for sid in set(self._published_at) - set(published):
            self._published_at.pop(sid, None)  # stored or deleted meanwhile
        now = self.clock()
        ages = [now - self._published_at.get(sid, self._started_at) for sid in published]
        return {"sessions": len(ages), "oldest_s": round(max(ages, default=0.0), 1)}

    # --- publishing -----------------------------------------------------------------------
    def publish_session(self, session_id: str) -> bool:
        """Send one session from the outbox; True once the broker has acknowledged all of it,
        and then the session is moved to ``published/``. DamagedSession if it cannot be sent."""
        manifest = self.store.checked_manifest(session_id)
        done = self.store.parts_sent(session_id)
        if not done:
            self._prepare(session_id, int(manifest["bytes"]))
            manifest = self.store.checked_manifest(session_id)  # re-stamping rewrites it
        parts = manifest["parts"]
        if done:
            log.info("session %s: resuming its publish at part %d of %d", session_id, done, parts)
        if not self._send(session_id, OUTBOX, manifest, range(done, parts)):
            return False
        self.store.mark_published(session_id)
        self._published_at[session_id] = self.clock()
        self._due[session_id] = (self.clock() + self.receipt_timeout_s, 0)
        self.published += 1
        log.info("session %s published (%d bytes in %d parts)%s", session_id,
                 manifest["bytes"], parts, "; awaiting the collector's receipt"
                 if self.require_receipt else "")
        self.on_change(session_id)
        return True

    def _prepare(self, session_id: str, nbytes: int) -> None:
        """Run ``prepare`` (re-stamping writes a full copy of the session). When the disk
        has no room for the copy, room is made and it is tried once more; if it still
        cannot be written the session goes out as recorded, its manifest still saying
        ``clock.synced: false``, which is the truth about its times."""
        for attempt in (1, 2):
            try:
                self.prepare(session_id)
                return
            except OSError as exc:
                if not cannot_write(exc):
                    raise
                self.store.settle_replacement(session_id)  # drop a half-written copy
                why, full_disk = f"{type(exc).__name__}: {exc}", is_disk_full(exc)
            if attempt == 1 and full_disk:
                try:
                    self.store.make_room(nbytes, disk_full=True)
                    continue
                except (StoreFull, OSError) as full:
                    why += f"; {type(full).__name__}: {full}"
            log.warning("session %s: cannot be re-stamped onto the synchronised clock (%s); "
                        "publishing it as recorded (clock.synced: false)", session_id, why)
            return

    def resend(self, session_id: str, parts: list[int] | None) -> str | None:
        """A collector is missing parts of a session (a broker lost them after acknowledging
        them): queue them again. Returns why not, or None."""
        state = self.store.find(session_id)
        if state not in (OUTBOX, PUBLISHED, STORED):
            return f"session {session_id!r} is not on this device (or no longer)"
        if parts is not None:  # only the session's own part numbers are kept (memory)
            try:
                total = int(self.store.manifest(session_id, state)["parts"])
            except (OSError, ValueError, KeyError):
                total = 0
            parts = [n for n in parts if 0 <= n < total]
            if not parts:
                return None  # none of them is a part of this session: nothing to send
        self._queue_resend(session_id, parts)
        self.wake()
        return None

    def _queue_resend(self, session_id: str, parts: Iterable[int] | None) -> None:
        """Requests for one session merge while queued, and a session is retransmitted at
        most once per :data:`RESEND_HOLDOFF_S`: 200 requests make two retransmissions (the
        first at once, the rest merged into one when the hold-off ends), not 200."""
        with self._lock:
            if parts is None or (session_id in self._resends
                                 and self._resends[session_id] is None):
                self._resends[session_id] = None
            else:
                self._resends[session_id] = (self._resends.get(session_id) or set()) | set(parts)

    def _do_resends(self) -> None:
        now = self.clock()
        for sid in [s for s, t in self._resent_at.items() if now - t >= RESEND_HOLDOFF_S]:
            del self._resent_at[sid]
        while self.link.connected.is_set() and not self._stop.is_set():
            with self._lock:
                session_id = next((s for s in self._resends if s not in self._resent_at), None)
                if session_id is None:
                    return  # nothing queued, or only sessions in their hold-off
                parts = self._resends.pop(session_id)
            self._resent_at[session_id] = self.clock()
            if not self._resend(session_id, parts):
                del self._resent_at[session_id]  # it did not go out: no hold-off
                self._queue_resend(session_id, parts)  # connection lost: try again later
                return

    def _resend(self, session_id: str, parts: set[int] | None) -> bool:
        """The one resend routine: ``parts`` (None: all) and then the manifest of a session
        already published, whoever asks (the collector, or an overdue receipt). False when
        the connection went; True when sent, or when there is nothing to send."""
        state = self.store.find(session_id)
        if state == OUTBOX:
            return True  # still queued for its first publish, which sends everything
        if state not in (PUBLISHED, STORED):
            log.info("publisher: resend of %s skipped: it is %s", session_id,
                     state or "not on this device")
            return True
        try:
            manifest = self.store.checked_manifest(session_id, state)
            total = manifest["parts"]
            wanted = sorted(n for n in parts if 0 <= n < total) if parts else range(total)
            if not self._send(session_id, state, manifest, wanted):
                return False
        except DamagedSession as exc:
            self.store.quarantine(session_id, state, f"cannot be sent again: {exc}")
            self.on_change(session_id)
            return True
        except FileNotFoundError:  # the recorder's thread made room with it meanwhile
            log.info("publisher: resend of %s skipped: deleted to make room", session_id)
            return True
        self.resent += 1
        log.info("session %s: sent %d part(s) and the manifest again", session_id, len(wanted))
        return True

    def _send(self, session_id: str, state: str, manifest: dict[str, object],
              parts: Iterable[int]) -> bool:
        """Parts (each acknowledged, a window in flight), then the manifest."""
        unacked = deque(parts)
        in_flight: deque[tuple[int, Delivery]] = deque()
        next_note = time.monotonic() + RESUME_NOTE_EVERY_S
        with open(self.store.path(state, session_id), "rb") as f:
            while unacked or in_flight:
                self.last_loop_s = time.monotonic()
                if self._stop.is_set() or not self.link.connected.is_set():
                    return False
                while unacked and len(in_flight) < WINDOW_PARTS:
                    n = unacked.popleft()
                    f.seek(n * self.part_bytes)
                    data = f.read(self.part_bytes)
                    in_flight.append(
                        (n, self.link.publish(self.topic(session_id, f"part/{n}"), data, qos=1)))
                n, delivery = in_flight.popleft()
                if delivery.wait(ACK_TIMEOUT_S):
                    if state == OUTBOX and time.monotonic() >= next_note:
                        self.store.note_parts_sent(session_id, n + 1)  # resume point
                        next_note = time.monotonic() + RESUME_NOTE_EVERY_S
                    continue
                if delivery.error:
                    log.warning("publisher: broker refused part %d of %s: %s",
                                n, session_id, delivery.error)
                return False  # the next attempt starts again from the resume point
        delivery = self.link.publish(self.topic(session_id, "manifest"),
                                     json.dumps(manifest).encode(), qos=1)
        return delivery.wait(ACK_TIMEOUT_S)

    def drain(self) -> None:
        """Publish everything in the outbox, oldest first, while connected. A damaged
        session is quarantined and the next one goes out; none blocks the rest."""
        for session_id in self.store.pending():
            if self._stop.is_set() or not self.link.connected.is_set():
                return
            self.last_loop_s = time.monotonic()
            if session_id in self._retry_at and self.clock() < self._retry_at[session_id][0]:
                continue  # backing off after an error that was not the session's fault
            try:
                if not self.publish_session(session_id):
                    return  # the connection went: wait for it
                self._errors.pop(session_id, None)
                self._retry_at.pop(session_id, None)
            except DamagedSession as exc:
                self.store.quarantine(session_id, OUTBOX, str(exc))
                self.on_change(session_id)
            except (OSError, ValueError) as exc:  # ValueError: SessionFileError, DocumentError
                self._publish_failed(session_id, exc)

    def _publish_failed(self, session_id: str, exc: OSError | ValueError) -> None:
        """Only a session that cannot be read (:func:`is_unreadable`) or whose file does not
        parse or match its manifest (a ValueError) is quarantined, after
        :data:`MAX_PUBLISH_ERRORS` in a row; any other error (a full or read-only disk) is
        not the session's: room is made if the disk is full, and it is tried again after a
        growing wait."""
        why = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ValueError) or is_unreadable(exc):
            errors = self._errors[session_id] = self._errors.get(session_id, 0) + 1
            log.error("publisher: cannot send session %s (%d time(s) in a row): %s",
                      session_id, errors, why)
            if errors >= MAX_PUBLISH_ERRORS:
                self._errors.pop(session_id)
                self._retry_at.pop(session_id, None)
                self.store.quarantine(session_id, OUTBOX,
                                      f"it could not be sent {errors} times: {why}")
                self.on_change(session_id)
            return
        failures = self._retry_at.get(session_id, (0.0, 0))[1] + 1
        wait = min(IDLE_RESCAN_S * 2 ** (failures - 1), PUBLISH_BACKOFF_MAX_S)
        self._retry_at[session_id] = (self.clock() + wait, failures)
        if is_disk_full(exc):
            try:
                self.store.make_room(0, disk_full=True)
            except (StoreFull, OSError) as full:
                why += f"; {type(full).__name__}: {full}"
        log.error("publisher: cannot publish %s now (%s); not the session's fault: trying "
                  "again in %.0f s", session_id, why, wait)

    def start(self) -> None:
        self.use_link(self.link)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_loop_s = time.monotonic()
            self._wake.wait(min(IDLE_RESCAN_S, RECEIPT_CHECK_EVERY_S))
            self._wake.clear()
            try:
                self.idle()
                self._take_receipts()
                if self.link.connected.is_set():
                    self._check_receipts_due()
                    self._do_resends()
                    self.drain()
            except Exception:  # a bug must not end delivery; the watchdog sees the rest
                log.exception("publisher: unexpected error; retrying")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout_s: float) -> None:
        """Give pending sessions up to ``timeout_s`` to go out (at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.store.pending() and self.link.connected.is_set() \
                and time.monotonic() < deadline:
            self.wake()
            time.sleep(0.05)

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
