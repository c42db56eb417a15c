"""Session files decoded with numpy: column arrays without a Python object per sample.

Each message's arrays are appended as raw little-endian bytes to one growing buffer per
column, which numpy then views without a copy. Needs numpy (the ``[data]`` or ``[plot]``
extra); never imported by the daemon.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from edge_recorder.errors import SessionFileError
from edge_recorder.sessionfile import CDR_LE_HEADER, FLOAT_FIELDS, SessionFile

_NAN32 = struct.pack("<f", float("nan"))
_LENGTH = struct.Struct("<I")


class SensorBuffers:
    """Raw column bytes of one sensor, appended message by message."""

    def __init__(self) -> None:
        self.t_ns = bytearray()
        self.floats = [bytearray() for _ in FLOAT_FIELDS]
        self.has_temp = False

    def add(self, data: bytes) -> None:
        view = memoryview(data)
        if view[:4] != CDR_LE_HEADER:
            raise ValueError("not a little-endian CDR message")
        (n,) = _LENGTH.unpack_from(view, 4)
        end = 12 + 8 * n
        if end > len(view):
            raise ValueError("t_ns runs past the message")
        self.t_ns += view[12:end]
        offset = end
        for i, name in enumerate(FLOAT_FIELDS):
            (m,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            stop = offset + 4 * m
            if stop > len(view) or (m != n and not (m == 0 and name == "temp_c")):
                raise ValueError(f"{name} holds {m} values for {n} timestamps")
            if m:
                self.floats[i] += view[offset:stop]
                self.has_temp |= name == "temp_c"
            else:
                self.floats[i] += _NAN32 * n  # temp_c only: a sensor without it
            offset = stop

    def arrays(self) -> dict[str, Any]:
        """Zero-copy numpy views of the buffers, sorted by ``t_ns`` if they were not."""
        cols: dict[str, Any] = {"t_ns": np.frombuffer(self.t_ns, dtype="<i8")}
        for name, buf in zip(FLOAT_FIELDS, self.floats, strict=True):
            if name != "temp_c" or self.has_temp:
                cols[name] = np.frombuffer(buf, dtype="<f4")
        t = cols["t_ns"]
        if len(t) > 1 and bool(np.any(t[1:] < t[:-1])):
            order = np.argsort(t, kind="stable")
            cols = {k: v[order] for k, v in cols.items()}
        return cols


def decode_session(session: SessionFile) -> dict[str, dict[str, Any]]:
    """Every sample of a session file as numpy arrays: ``{sensor: {"t_ns": ..., "ax": ...}}``."""
    sensors: dict[str, SensorBuffers] = {}
    path = session.path
    for name, data in session.messages():
        try:
            sensors.setdefault(name, SensorBuffers()).add(data)
        except (ValueError, struct.error) as exc:
            raise SessionFileError(f"{path}: damaged message on sensor {name} ({exc})") from exc
    return {name: sensors[name].arrays() for name in sorted(sensors)}
