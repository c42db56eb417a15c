"""Start-up recovery: every session left unfinished by a crash or power cut is salvaged.

All complete chunks of the torn file (flushed every half second while recording; after
the last one, the zeros the writer keeps ahead of its data, or a torn record) are copied
into a new, finished file with ``stop_reason: recovered``, which then joins
the outbox like any other session. Half-done state changes are completed. A session that
cannot be recovered (unreadable header or file) is quarantined to ``failed/``, counted,
and never tried again. Every file change goes through the store, durably.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edge_recorder import __version__
from edge_recorder.recording.ids import iso_utc
from edge_recorder.recording.store import OUTBOX, RECORDING, DeviceStore, cannot_write
from edge_recorder.sessionfile import ChannelInfo, SessionWriter, read_manifest, salvage

log = logging.getLogger(__name__)


def recover(store: DeviceStore) -> list[dict[str, Any]]:
    """Finish every interrupted session and state change; return the recovered manifests."""
    store.finish_moves()
    recovered = []
    for sid in store.unfinished():
        header_path = store.path(RECORDING, sid, ".json")
        try:
            if store.path(OUTBOX, sid, ".json").exists():
                store.discard_recording(sid)  # completed; only the clean-up was interrupted
                continue
            if store.path(OUTBOX, sid).exists():  # moved, manifest not yet written
                manifest = dict(read_manifest(store.path(OUTBOX, sid)))
                store.reopen(sid)
                recovered.append(store.complete(sid, manifest))
                continue
            header = json.loads(header_path.read_text())
            salvaged = salvage_session(store, sid, header=header)
        except (OSError, ValueError, KeyError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if cannot_write(exc):  # not the session's fault: the next start tries again
                log.error("recovery: session %s cannot be recovered now (%s); its files stay "
                          "in %s", sid, why, store.root / RECORDING)
                continue
            store.quarantine(sid, RECORDING, f"it could not be recovered after an unclean "
                             f"stop: {why}")
            continue
        if salvaged is not None:
            recovered.append(salvaged)
    return recovered


def salvage_session(store: DeviceStore, sid: str, *, stop_reason: str = "recovered",
                    header: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Close an unfinished session from what its file holds: every complete chunk, every
    sensor of the session, and a gap (reason ``crash``, or ``store_full`` when the disk
    filled up) from each sensor's last durable sample to the last instant the recorder was
    known to be recording it. The session then joins the outbox. None if it wrote no file."""
    if header is None:
        header = json.loads(store.path(RECORDING, sid, ".json").read_text())
    src = store.path(RECORDING, sid)
    if not src.exists():
        log.warning("recovery: session %s never wrote a file; nothing to recover", sid)
        store.discard_recording(sid)
        return None
    found = salvage(src)
    log.info("recovery: session %s: %d bytes of its file read back, up to %s", sid,
             found.data_end, found.end)
    start_ns = int(header["window_start_ns"])
    alive_ns = store.last_alive_ns(sid)
    # every sensor the session had (the header says), not only those with salvaged samples
    known = {c.name: c for c in found.channels}
    channels = [ChannelInfo(str(x["name"]), str(x["driver"]), float(x["rate_hz"]))
                for x in header.get("sensors", [])] or found.channels
    channels += [c for c in found.channels if c.name not in {x.name for x in channels}]
    tmp = store.salvage_path(sid)
    writer = SessionWriter(tmp, channels, zero_fill_step_bytes=0)  # written whole, one fsync
    for sensor, t0, data in found.messages:
        writer.write(sensor, t0, data)
    stop_ns = max(start_ns, alive_ns, found.last_t_ns or start_ns)
    sensors = []
    for c in channels:
        rate_hz = c.rate_hz or (known[c.name].rate_hz if c.name in known else 0.0)
        gap = crash_gap(found.last_t_ns_by_sensor.get(c.name), start_ns, stop_ns, rate_hz,
                        reason="crash" if stop_reason == "recovered" else stop_reason)
        sensors.append({"name": c.name, "driver": c.driver, "rate_hz": rate_hz,
                        "samples": found.samples.get(c.name, 0), "dropped": gap["lost"],
                        "gaps": [gap]})
    manifest = {
        key: header[key] for key in ("session_id", "device_id", "labels", "journey_id",
                                     "started_at", "trigger", "pre_trigger_s")
    }
    manifest.update(
        stopped_at=iso_utc(stop_ns),
        duration_s=round((stop_ns - start_ns) / 1e9, 6),
        stop_reason=stop_reason,
        sensors=sensors,
        format="mcap",
        recorder_version=__version__,
    )
    if "clock" in header:  # the file is on the time base the session opened with
        manifest["clock"] = dict(header["clock"], steps=[])
    writer.finish(manifest)
    store.replace_salvaged(sid)
    manifest = store.complete(sid, manifest)
    log.warning("recovery: session %s closed after an unclean stop (%s): %s", sid, stop_reason,
                ", ".join(f"{c['name']} {c['samples']} samples, ~{c['dropped']} lost in the "
                          "crash" for c in manifest["sensors"]))
    return manifest


def crash_gap(last_sample_ns: int | None, session_start_ns: int, alive_ns: int,
              rate_hz: float, reason: str = "crash") -> dict[str, Any]:
    """The gap a crash left in one sensor: from just after its last durable sample (or the
    session's start, when none survived) to the last instant the recorder was known alive,
    with the samples lost estimated at the sensor's rate."""
    start_ns = session_start_ns if last_sample_ns is None else \
        last_sample_ns + (round(1e9 / rate_hz) if rate_hz > 0 else 0)
    end_ns = max(start_ns, alive_ns)
    return {"start_ns": start_ns, "end_ns": end_ns,
            "lost": round((end_ns - start_ns) * rate_hz / 1e9), "reason": reason}
