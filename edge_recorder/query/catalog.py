"""Listing sessions from a store: the collector's or the device's own.

A store is recognised by its folders: ``sessions/`` (collector), ``outbox/`` and
``published/`` (device; there each entry also says whether it is published yet).
Every session is its manifest JSON next to its MCAP file.
"""

from __future__ import annotations

import json
import re
import time
from calendar import timegm
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_recorder.errors import UsageError

STORE_FOLDERS = {"sessions": None, "outbox": False, "published": True}


@dataclass(frozen=True)
class Entry:
    manifest: dict[str, Any]
    path: Path
    published: bool | None  # None on the collector's store

    def as_json(self) -> dict[str, Any]:
        doc = dict(self.manifest, path=str(self.path))
        if self.published is not None:
            doc["published"] = self.published
        return doc


def scan(store: Path) -> list[Entry]:
    """Every complete session in ``store``, sorted by start time."""
    folders = [(store / name, flag) for name, flag in STORE_FOLDERS.items()
               if (store / name).is_dir()]
    if not folders:
        raise UsageError(f"{store} is not an edge-recorder store (no sessions/, outbox/ or "
                         "published/ folder); give the collector's --store or the daemon's "
                         "storage.dir")
    entries = []
    for folder, flag in folders:
        for manifest_path in folder.glob("*.json"):
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                continue  # being written or damaged; not a complete session
            entries.append(Entry(manifest, manifest_path.with_suffix(".mcap"), flag))
    entries.sort(key=lambda e: (str(e.manifest.get("started_at", "")),
                                str(e.manifest.get("session_id", ""))))
    return entries


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now_s: float | None = None) -> str:
    """``--since``/``--until`` → an ISO UTC string comparable with manifest times.

    Accepts ISO 8601 (``2026-11-26``, ``2026-11-26T10:00``, ``…Z``; times are UTC) or an
    age such as ``30m``, ``2h``, ``7d`` (that long ago).
    """
    now_s = time.time() if now_s is None else now_s
    m = _RELATIVE.match(text.strip())
    if m:
        t = now_s - float(m.group(1)) * _UNIT_S[m.group(2)]
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
            f".{int((t % 1) * 1e6):06d}Z"
    cleaned = text.strip().rstrip("Zz").replace(" ", "T")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            parsed = time.strptime(cleaned, fmt)
        except ValueError:
            continue
        frac = cleaned.split(".")[1] if "." in cleaned else "0"
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timegm(parsed))) + \
            f".{int(frac.ljust(6, '0')[:6]):06d}Z"
    raise UsageError(f"{text!r} is not a time: use ISO 8601 (2026-11-26T10:00:00Z) or an age "
                     "(30m, 2h, 7d)")


def select(
    entries: Iterable[Entry],
    *,
    labels: Iterable[str] = (),
    journey: str | None = None,
    device: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[Entry]:
    """Sessions having every label, the journey and device given, starting in [since, until)."""
    wanted = set(labels)
    out = []
    for e in entries:
        m = e.manifest
        if wanted and not wanted <= set(m.get("labels") or []):
            continue
        if journey is not None and m.get("journey_id") != journey:
            continue
        if device is not None and m.get("device_id") != device:
            continue
        started = str(m.get("started_at", ""))
        if since is not None and started < since:
            continue
        if until is not None and started >= until:
            continue
        out.append(e)
    return out


def journeys(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """One row per journeyId: sessions, devices, first start and last stop."""
    rows: dict[str, dict[str, Any]] = {}
    for e in entries:
        m = e.manifest
        jid = m.get("journey_id")
        if jid is None:
            continue
        row = rows.setdefault(jid, {"journey_id": jid, "sessions": 0, "devices": [],
                                    "first_started_at": m.get("started_at"),
                                    "last_stopped_at": m.get("stopped_at")})
        row["sessions"] += 1
        if m.get("device_id") not in row["devices"]:
            row["devices"].append(m.get("device_id"))
        row["first_started_at"] = min(row["first_started_at"], m.get("started_at"))
        row["last_stopped_at"] = max(row["last_stopped_at"], m.get("stopped_at"))
    return sorted(rows.values(), key=lambda r: r["first_started_at"])
