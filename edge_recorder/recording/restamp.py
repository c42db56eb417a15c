"""Sessions recorded before the clock was synchronised, moved onto the synchronised clock.

A Pi without a real-time clock boots on a stale time and records on it until its NTP client
steps the clock. A session finished in that state says ``clock.synced: false`` and keeps
the mapping it was written with (``clock.offset_ns``: wall − monotonic). If it is still on
the device when the kernel reports the clock synchronised, and the monotonic clock is the
same one (same boot), its every time is moved by the change of the mapping before it is
first published: samples, ``started_at``, ``stopped_at``, gaps. One published before then
keeps ``synced: false``, which is the truth about its times.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from edge_recorder.clock import Clock
from edge_recorder.recording.ids import iso_utc
from edge_recorder.recording.store import OUTBOX, DeviceStore
from edge_recorder.sessionfile import restamp

log = logging.getLogger(__name__)


def iso_ns(text: str) -> int:
    """The inverse of :func:`iso_utc` (µs precision)."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000


def shifted_manifest(manifest: dict[str, Any], delta_ns: int) -> dict[str, Any]:
    """The manifest with every wall-clock time moved by ``delta_ns``."""
    out = dict(manifest)
    for key in ("started_at", "stopped_at"):
        if isinstance(out.get(key), str):
            out[key] = iso_utc(iso_ns(out[key]) + delta_ns)
    out["sensors"] = [dict(s, gaps=[dict(g, start_ns=g["start_ns"] + delta_ns,
                                         end_ns=g["end_ns"] + delta_ns)
                                    for g in s.get("gaps", [])])
                      for s in manifest.get("sensors", [])]
    return out


def restamp_if_synced(store: DeviceStore, clock: Clock, session_id: str) -> bool:
    """Before an outbox session's first publish: re-stamp it if it was recorded unsynced on
    this boot and the clock is synchronised now. True if it was re-stamped."""
    store.settle_replacement(session_id)
    manifest = store.manifest(session_id)
    recorded: dict[str, Any] = manifest.get("clock") or {}
    if recorded.get("synced") is not False or clock.synced() is not True:
        return False
    if recorded.get("boot_id") != clock.boot_id or recorded.get("source") != clock.source \
            or recorded.get("offset_ns") is None:
        return False  # another boot: its monotonic instants cannot be mapped any more
    offset = clock.offset_ns()
    delta = offset - int(recorded["offset_ns"])
    new = shifted_manifest(manifest, delta)
    new["clock"] = dict(recorded, synced=True, offset_ns=offset,
                        restamped={"at_ns": clock.wall_ns(), "shift_ns": delta})
    restamp(store.path(OUTBOX, session_id), delta, new,
            out_path=store.replacement_path(session_id))
    store.replace_file(session_id, new)
    log.info("session %s was recorded before the clock was synchronised; re-stamped by "
             "%+.3f s", session_id, delta / 1e9)
    return True


class Restamper:
    """Both moments a session recorded unsynced is re-stamped: before its first publish
    (:meth:`before_publish`), and as soon as the clock is synchronised (:meth:`on_idle`,
    every pending session at once), so one still waiting for its broker when the device
    reboots is not left on a clock that can no longer be mapped. Both run on the publisher's
    thread, which alone sends outbox files, so a file is never rewritten while it is sent."""

    def __init__(self, store: DeviceStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._checked: set[str] = set()  # outbox sessions looked at while synchronised

    def before_publish(self, session_id: str) -> bool:
        return restamp_if_synced(self.store, self.clock, session_id)

    def on_idle(self) -> None:
        """While synchronised, every outbox session not looked at yet (one directory listing
        a turn; a session's manifest is read once)."""
        if self.clock.synced() is not True:
            self._checked.clear()
            return
        pending = self.store.pending()
        for sid in pending:
            if sid in self._checked:
                continue
            self._checked.add(sid)
            if self.store.parts_sent(sid):
                continue  # its publish began: it goes out as it started
            try:
                restamp_if_synced(self.store, self.clock, sid)
            except (OSError, ValueError) as exc:  # tried again before it is published
                log.warning("session %s: cannot re-stamp it now (%s: %s); trying again "
                            "before it is published", sid, type(exc).__name__, exc)
                try:
                    self.store.settle_replacement(sid)  # drop a half-written copy
                except (OSError, ValueError):
                    pass
        self._checked.intersection_update(pending)
