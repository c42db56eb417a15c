"""Sessions as pandas DataFrames: ``load_session`` and ``load_sessions`` (the Python API).

Needs the ``[data]`` extra (``pip install 'edge-recorder[data]'``: numpy, pandas); never
imported by the daemon. Decoding is numpy's (:mod:`edge_recorder.query.arrays`), with no
Python object per sample, so memory stays within about twice the decoded arrays.

One row per sample: ``sensor`` (categorical), ``t_ns`` (int64, ns since the UNIX epoch),
``time`` (the same instant as a UTC datetime), ``ax ay az`` (m/s², float32), ``gx gy gz``
(rad/s, float32) and ``temp_c`` (°C, float32; present when a sensor records it, NaN for
sensors that do not). Rows are ordered by sensor name, then ``t_ns``. ``df.attrs`` holds
``session_id``, ``device_id``, ``labels``, ``journey_id``, ``started_at``,
``pre_trigger_s``, ``gaps`` (per sensor, from the manifest) and the whole ``manifest``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_recorder.errors import UsageError
from edge_recorder.query.index import Filters, open_index
from edge_recorder.sensors.base import CHANNELS
from edge_recorder.sessionfile import FLOAT_FIELDS, SessionFile

try:
    import numpy as np
    import pandas as pd

    from edge_recorder.query.arrays import decode_session
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("load_session needs numpy and pandas: "
                      "pip install 'edge-recorder[data]'") from exc

COLUMNS = ("sensor", "t_ns", "time", *CHANNELS)


def _resolve(path_or_id: str | Path, store: str | Path | None,
             device: str | None = None, index: str | None = None) -> Path:
    path = Path(path_or_id)
    if path.is_file():
        return path
    if store is None:
        raise UsageError(f"{path_or_id}: no such session file (to look up a session id, "
                         "give the store too)")
    with open_index(Path(store), index) as found:
        return found.find(str(path_or_id), device=device).path


def load_session(path_or_id: str | Path, store: str | Path | None = None, *,
                 device: str | None = None, index: str | None = None) -> pd.DataFrame:
    """One session as a DataFrame, one row per sample (see the module docstring).

    ``path_or_id`` is a session file, or a session id looked up in ``store`` (the
    collector's store or a daemon's storage dir; ``index``: a PostgreSQL URL instead of the
    store's SQLite index). The file's CRCs are checked first.
    """
    path = _resolve(path_or_id, store, device, index)
    session = SessionFile(path)
    manifest = session.manifest
    decoded = decode_session(session)
    frame = _frame(decoded)
    frame.attrs.update({
        "session_id": manifest.get("session_id"), "device_id": manifest.get("device_id"),
        "labels": list(manifest.get("labels") or []), "journey_id": manifest.get("journey_id"),
        "started_at": manifest.get("started_at"), "pre_trigger_s": manifest.get("pre_trigger_s"),
        "gaps": {s.get("name"): s.get("gaps", []) for s in manifest.get("sensors") or []},
        "manifest": manifest, "path": str(path)})
    return frame


def _frame(decoded: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Columns joined across sensors one at a time, so the peak is one column over 1×."""
    names = list(decoded)
    counts = [len(cols["t_ns"]) for cols in decoded.values()]
    has_temp = any("temp_c" in cols for cols in decoded.values())
    data: dict[str, Any] = {}
    codes = np.repeat(np.arange(len(names), dtype=np.int16), counts)
    data["sensor"] = pd.Categorical.from_codes(codes, categories=names) if names else \
        pd.Categorical([])
    for column in ("t_ns", *FLOAT_FIELDS):
        if column == "temp_c" and not has_temp:
            continue
        dtype = "<i8" if column == "t_ns" else "<f4"
        parts = [cols.pop(column) if column in cols else np.full(n, np.nan, dtype=dtype)
                 for cols, n in zip(decoded.values(), counts, strict=True)]
        data[column] = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts \
            else np.empty(0, dtype=dtype)
        del parts
        if column == "t_ns":
            data["time"] = pd.to_datetime(data["t_ns"], unit="ns", utc=True)
    return pd.DataFrame(data, copy=False)


def load_sessions(
    store: str | Path,
    *,
    labels: Iterable[str] = (),
    journey: str | None = None,
    device: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    index: str | None = None,
) -> pd.DataFrame:
    """Every session in ``store`` matching the filters, as one DataFrame.

    Filters work as in ``sessions list``: every label must be present; ``since``/``until``
    take an ISO 8601 UTC time, an age (``"2h"``) or a datetime, on the session's start.
    Adds a ``session_id`` column (categorical); ``df.attrs["sessions"]`` holds the
    manifests in order.
    """
    from edge_recorder.query.times import parse_time

    def when(value: str | datetime | None) -> str | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                value = value.astimezone(UTC)
            value = value.strftime("%Y-%m-%dT%H:%M:%S.%f")
        return parse_time(value)

    wanted = Filters(labels=tuple(labels), journey=journey, device=device,
                     since=when(since), until=when(until))
    with open_index(Path(store), index) as found:
        entries = found.select(wanted)
    frames, manifests = [], []
    for entry in entries:
        frame = load_session(entry.path)
        frame.insert(0, "session_id", entry.manifest.session_id)
        manifests.append(frame.attrs["manifest"])
        frame.attrs = {}
        frames.append(frame)
    if not frames:
        empty = pd.DataFrame({c: [] for c in ("session_id", *COLUMNS)})
        empty.attrs["sessions"] = []
        return empty
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out["session_id"] = out["session_id"].astype("category")
    out["sensor"] = out["sensor"].astype("category")
    out.attrs = {"sessions": manifests}
    return out
