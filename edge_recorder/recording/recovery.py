"""Start-up recovery: every session left unfinished by a crash or power cut is salvaged.

All complete chunks of the torn file (flushed every half second while recording)
are copied into a new, finished file with ``stop_reason: recovered``, which then joins
the outbox like any other session. Half-done state changes are completed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edge_recorder import __version__
from edge_recorder.recording.ids import iso_utc
from edge_recorder.recording.store import OUTBOX, PUBLISHED, RECORDING, DeviceStore
from edge_recorder.sessionfile import SessionWriter, read_manifest, salvage

log = logging.getLogger(__name__)


def recover(store: DeviceStore) -> list[dict[str, Any]]:
    """Finish every interrupted session and state change; return the recovered manifests."""
    _finish_half_published(store)
    recovered = []
    for sid in store.unfinished():
        header_path = store.path(RECORDING, sid, ".json")
        try:
            if store.path(OUTBOX, sid, ".json").exists():
                header_path.unlink()  # completed; only the clean-up was interrupted
                continue
            if store.path(OUTBOX, sid).exists():  # moved, manifest not yet written
                manifest = dict(read_manifest(store.path(OUTBOX, sid)))
                store.path(OUTBOX, sid).rename(store.path(RECORDING, sid))
                recovered.append(store.complete(sid, manifest))
                continue
            header = json.loads(header_path.read_text())
            salvaged = _salvage_session(store, sid, header)
        except (OSError, ValueError, KeyError) as exc:
            log.error("recovery: session %s cannot be recovered (%s); its files stay in %s",
                      sid, exc, store.root / RECORDING)
            continue
        if salvaged is not None:
            recovered.append(salvaged)
    return recovered


def _salvage_session(store: DeviceStore, sid: str, header: dict[str, Any]) -> dict[str, Any] | None:
    src = store.path(RECORDING, sid)
    if not src.exists():
        log.warning("recovery: session %s never wrote a file; nothing to recover", sid)
        store.path(RECORDING, sid, ".json").unlink()
        return None
    found = salvage(src)
    tmp = store.path(RECORDING, sid, ".recovered.mcap")
    tmp.unlink(missing_ok=True)
    writer = SessionWriter(tmp, found.channels)
    for sensor, t0, data in found.messages:
        writer.write(sensor, t0, data)
    start_ns = int(header["window_start_ns"])
    stop_ns = max(start_ns, found.last_t_ns or start_ns)
    manifest = {
        key: header[key] for key in ("session_id", "device_id", "labels", "journey_id",
                                     "started_at", "trigger", "pre_trigger_s")
    }
    manifest.update(
        stopped_at=iso_utc(stop_ns),
        duration_s=round((stop_ns - start_ns) / 1e9, 6),
        stop_reason="recovered",
        sensors=[{"name": c.name, "driver": c.driver, "rate_hz": c.rate_hz,
                  "samples": found.samples.get(c.name, 0), "dropped": 0, "gaps": []}
                 for c in found.channels],
        format="mcap",
        recorder_version=__version__,
    )
    if "clock" in header:  # the file is on the time base the session opened with
        manifest["clock"] = dict(header["clock"], steps=[])
    writer.finish(manifest)
    tmp.replace(src)
    manifest = store.complete(sid, manifest)
    log.warning("recovery: session %s recovered after an unclean stop: %s", sid,
                ", ".join(f"{c['name']} {c['samples']} samples" for c in manifest["sensors"]))
    return manifest


def _finish_half_published(store: DeviceStore) -> None:
    for sid in store.pending():
        if not store.path(OUTBOX, sid).exists() and store.path(PUBLISHED, sid).exists():
            store.path(OUTBOX, sid, ".json").replace(store.path(PUBLISHED, sid, ".json"))
