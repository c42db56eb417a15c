"""Edge Impulse export: the data acquisition format (JSON), one file per sensor and run.

The format (Edge Impulse docs, "Data acquisition format"): ``protected`` {``ver``: "v1",
``alg``: "HS256" or "none", ``iat``}, ``signature`` (hex HMAC-SHA256 of the whole file as
written with the signature set to 64 zeros; those 64 zeros when unsigned), ``payload``
{``device_name``, ``device_type``, ``interval_ms``, ``sensors`` [{``name``, ``units``}],
``values`` [[one value per sensor axis], one row per sample]}. Units are SenML's.

A sample has a single ``interval_ms``, so a gap in the recording must not sit inside one:
each sensor's samples are split into gap-free runs (a step longer than 1.5 nominal
intervals ends a run), each its own file. The label is the file name's first part
(``{label}.{session}.{sensor}.{run}.json``), which is how Edge Impulse's uploader reads it.
Files are written as they are read: memory does not grow with the session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from edge_recorder.errors import SessionFileError, UsageError
from edge_recorder.query.export import Progress, SampleCounter
from edge_recorder.sessionfile import SessionFile

EMPTY_SIGNATURE = "0" * 64
GAP_FACTOR = 1.5  # a step this many nominal intervals long ends a run
AXES = (("ax", "accX", "m/s2"), ("ay", "accY", "m/s2"), ("az", "accZ", "m/s2"),
        ("gx", "gyrX", "rad/s"), ("gy", "gyrY", "rad/s"), ("gz", "gyrZ", "rad/s"))
TEMPERATURE = ("temp_c", "temp", "Cel")
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class RunFile:
    """One written file: its name, sensor, run number and sample count."""

    name: str
    sensor: str
    run: int
    samples: int


def default_label(session: SessionFile, label: str | None) -> str:
    """``label`` if given, else the session's first label; one of them must exist."""
    if label:
        return label
    labels = session.manifest.get("labels") or []
    if not labels:
        raise UsageError(f"{session.path}: the session has no labels; give --label")
    return str(labels[0])


def write_edge_impulse(
    session: SessionFile,
    open_file: Callable[[str], IO[bytes]],
    *,
    label: str | None = None,
    hmac_key: str | None = None,
    progress: Progress | None = None,
) -> list[RunFile]:
    """Write one data acquisition file per sensor and gap-free run; return what was written.

    ``open_file(name)`` gives a binary file object for each file (a seekable one when
    signing: the signature is written last, over its placeholder) and is closed here.
    """
    label = default_label(session, label)
    manifest = session.manifest
    sid = str(manifest.get("session_id", session.path.stem))
    rates = {c.name: c for c in session.channels}
    temps = session.has_temperature()
    counter = SampleCounter(session, progress)
    written: list[RunFile] = []
    for sensor in sorted(temps):
        channel = rates.get(sensor)
        nominal_ns = 1e9 / channel.rate_hz if channel and channel.rate_hz > 0 else None
        axes = [*AXES, TEMPERATURE] if temps[sensor] else list(AXES)
        for run, rows in enumerate(_runs(session, sensor, nominal_ns, axes), start=1):
            name = f"{_safe(label)}.{_safe(sid)}.{_safe(sensor)}.{run}.json"
            with open_file(name) as out:
                n = _write_run(out, rows, axes=axes, device_type=_device_type(channel),
                               device_name=manifest.get("device_id"), key=hmac_key,
                               nominal_ns=nominal_ns, counter=counter)
            written.append(RunFile(name, sensor, run, n))
    return written


def _safe(text: str) -> str:
    return _SAFE.sub("_", text) or "_"


def _device_type(channel: Any) -> str:
    return f"edge-recorder/{channel.driver}" if channel else "edge-recorder"


def _runs(session: SessionFile, sensor: str, nominal_ns: float | None,
          axes: list[tuple[str, str, str]]) -> Iterator[Iterator[Piece]]:
    """Gap-free runs of one sensor, each an iterator of pieces read while it is written."""
    pieces = _pieces(session, sensor, nominal_ns, axes)
    state = {"done": False}

    def run(first: Piece) -> Iterator[Piece]:
        yield first
        for piece in pieces:
            if piece is GAP:
                return
            yield piece
        state["done"] = True

    for piece in pieces:
        if piece is GAP:
            continue
        current = run(piece)
        yield current
        for _ in current:  # a caller that stopped early still moves past the run
            pass
        if state["done"]:
            return


Piece = tuple[list[int], list[list[float]]]
GAP: Piece = ([], [])


def _pieces(session: SessionFile, sensor: str, nominal_ns: float | None,
            axes: list[tuple[str, str, str]]) -> Iterator[Piece]:
    """(t_ns, [column per axis]) slices in time order, with :data:`GAP` between runs."""
    limit = GAP_FACTOR * nominal_ns if nominal_ns else None
    last: int | None = None
    for _name, batch in session.batches(sensor):
        t = batch["t_ns"]
        if not t:
            continue
        missing = [key for key, _n, _u in axes if key not in batch]
        if missing:  # JSON has no NaN, and a file's columns cannot change midway
            raise SessionFileError(f"{session.path}: sensor {sensor} has messages without "
                                   f"{', '.join(missing)}; cannot export it as one table")
        cols = [batch[key] for key, _n, _u in axes]
        start = 0
        if limit is not None:
            for i in range(len(t)):
                prev = last if i == 0 else t[i - 1]
                if prev is not None and t[i] - prev > limit:
                    if i > start:
                        yield t[start:i], [c[start:i] for c in cols]
                    yield GAP
                    start = i
        yield t[start:], [c[start:] for c in cols]
        last = t[-1]


def _write_run(out: IO[bytes], rows: Iterator[Piece], *, axes: list[tuple[str, str, str]],
               device_type: str, device_name: Any, key: str | None,
               nominal_ns: float | None, counter: SampleCounter) -> int:
    """Stream one file; return its sample count.

    ``interval_ms`` is the run's measured mean step, known only at its end, so it is the
    payload's last key. The HMAC is taken over the bytes as they are written (signature
    64 zeros), then written over the zeros.
    """
    if key and not out.seekable():
        raise UsageError("signing needs a seekable output (a file, not a pipe)")
    mac = hmac.new(key.encode(), digestmod=hashlib.sha256) if key else None
    protected = {"ver": "v1", "alg": "HS256" if key else "none", "iat": int(time.time())}
    payload: dict[str, Any] = {"device_type": device_type}
    if device_name:
        payload["device_name"] = str(device_name)
    payload["sensors"] = [{"name": name, "units": units} for _k, name, units in axes]
    head = ('{"protected": ' + json.dumps(protected) + ', "signature": "').encode()
    start = out.tell() if mac is not None else 0

    def emit(data: bytes) -> None:
        out.write(data)
        if mac is not None:
            mac.update(data)

    emit(head + EMPTY_SIGNATURE.encode())
    emit(('", "payload": ' + json.dumps(payload)[:-1] + ', "values": [').encode())
    n = 0
    first_t = last_t = 0
    fmt = "[" + ", ".join(["%.7g"] * len(axes)) + "]"
    for t, cols in rows:
        if not n:
            first_t = t[0]
        last_t = t[-1]
        text = ", ".join([fmt % row for row in zip(*cols, strict=True)])
        emit(((", " if n else "") + text).encode())
        n += len(t)
        counter.add(len(t))
    interval_ms = (last_t - first_t) / (n - 1) / 1e6 if n > 1 else (nominal_ns or 0) / 1e6
    emit(f'], "interval_ms": {interval_ms:.9g}}}}}\n'.encode())
    if mac is not None:
        end = out.tell()
        out.seek(start + len(head))
        out.write(mac.hexdigest().encode())
        out.seek(end)
    return n
