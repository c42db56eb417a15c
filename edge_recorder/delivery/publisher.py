"""Drains the store's outbox: parts, then the manifest, each acknowledged, then let go.

The publisher knows no recorder; it only sees finished files in the outbox. A session
is sent as ``P/sessions/{id}/part/{n}`` (QoS 1, each at most ``part_bytes``) with a
window of parts in flight; only when every part is acknowledged is the manifest sent,
and only when the manifest is acknowledged does the session move to ``published/``.
A dropped connection just pauses the loop; unacknowledged parts are sent again (same
bytes, same topic), so the collector sees duplicates at worst, never a gap.

A broker acknowledges QoS 1 before it has saved the message (Mosquitto persists on an
interval), so a broker crash can still lose acknowledged parts. The collector notices
(a manifest with parts missing, or parts without a manifest) and asks for them with a
``resend`` command; published sessions stay on the device for exactly this, until
``storage.max_bytes`` needs the room.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from edge_recorder.delivery.mqtt import Delivery, MqttLink
from edge_recorder.recording.store import OUTBOX, PUBLISHED, DeviceStore

log = logging.getLogger(__name__)

WINDOW_PARTS = 16
ACK_TIMEOUT_S = 20.0
IDLE_RESCAN_S = 2.0
RESUME_NOTE_EVERY_S = 1.0  # how often a long publish records how far it got


class Publisher:
    def __init__(
        self,
        store: DeviceStore,
        link: MqttLink,
        topic_root: str,
        *,
        part_bytes: int,
        on_published: Callable[[str], None] = lambda session_id: None,
        prepare: Callable[[str], object] = lambda session_id: None,
    ) -> None:
        """``prepare(session_id)`` runs before a session's first part is sent (re-stamping
        a session recorded before the clock was synchronised)."""
        self.store = store
        self.link = link
        self.topic_root = topic_root
        self.part_bytes = part_bytes
        self.on_published = on_published
        self.prepare = prepare
        self.published = 0
        self.resent = 0
        self._resends: deque[tuple[str, list[int] | None]] = deque()
        self._lock = threading.Lock()
        self.last_loop_s = time.monotonic()  # heartbeat for the watchdog
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Something new is in the outbox."""
        self._wake.set()

    def topic(self, session_id: str, leaf: str) -> str:
        return f"{self.topic_root}/sessions/{session_id}/{leaf}"

    def publish_session(self, session_id: str) -> bool:
        """Send one session from the outbox; True once the broker has acknowledged all of it,
        and then the session is moved to ``published/``."""
        done = self.store.parts_sent(session_id)
        if not done:
            self.prepare(session_id)
        manifest = self.store.manifest(session_id)
        parts = int(manifest["parts"])
        if done:
            log.info("session %s: resuming its publish at part %d of %d", session_id, done, parts)
        if not self._send(session_id, OUTBOX, manifest, range(done, parts)):
            return False
        self.store.mark_published(session_id)
        self.published += 1
        log.info("session %s published (%d bytes in %d parts)", session_id,
                 manifest["bytes"], parts)
        self.on_published(session_id)
        return True

    def resend(self, session_id: str, parts: list[int] | None) -> str | None:
        """A collector is missing parts of a session (a broker lost them in a crash after
        acknowledging them): queue them again. Returns why not, or None."""
        for state in (OUTBOX, PUBLISHED):
            if self.store.path(state, session_id, ".json").exists():
                break
        else:
            return f"session {session_id} is no longer on this device"
        with self._lock:
            self._resends.append((session_id, parts))
        self.wake()
        return None

    def _do_resends(self) -> None:
        while self._resends and self.link.connected.is_set() and not self._stop.is_set():
            with self._lock:
                session_id, parts = self._resends.popleft()
            state = PUBLISHED if self.store.path(PUBLISHED, session_id, ".json").exists() \
                else OUTBOX
            if state == OUTBOX:
                continue  # still queued for its first publish anyway
            try:
                manifest = self.store.manifest(session_id, PUBLISHED)
                total = int(manifest["parts"])
                wanted = sorted({n for n in parts if 0 <= n < total}) if parts else range(total)
                if self._send(session_id, PUBLISHED, manifest, wanted):
                    self.resent += 1
                    log.info("session %s: resent %d part(s) and the manifest on request",
                             session_id, len(wanted))
            except (OSError, ValueError, KeyError) as exc:
                log.error("publisher: cannot resend %s: %s", session_id, exc)

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
        """Publish everything in the outbox, oldest first, while connected."""
        for session_id in self.store.pending():
            if self._stop.is_set() or not self.link.connected.is_set():
                return
            try:
                if not self.publish_session(session_id):
                    return
            except (OSError, ValueError, KeyError) as exc:
                log.error("publisher: cannot publish %s: %s", session_id, exc)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_loop_s = time.monotonic()
            self._wake.wait(IDLE_RESCAN_S)
            self._wake.clear()
            if self.link.connected.is_set():
                try:
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
