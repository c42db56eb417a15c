"""What the session plots draw: a per-channel min/max envelope, computed from the file.

A 1-hour 2 × 1 kHz session holds 7.2 million samples (230 MB decoded) in ~72,000 messages
and ~7,200 chunks; the console must show it in under 2 s. So the file is never decoded
whole: chunks are read in batches of a few MB (only those whose time range meets the window
asked for, by the MCAP summary's chunk index, each chunk's CRC checked), the messages of a
batch are decoded with numpy a message size at a time (the recorder writes almost all of a
sensor's messages at one size), and each batch is folded into per-bucket minima and maxima
at once. Memory stays at one batch plus the buckets, whatever the session's length. The
file is mapped, and its summary (channels, chunk index) walked with ``struct``: the mcap
library's reader spends more time building its record objects than this spends decoding.

The CDR layout is the one :mod:`edge_recorder.sessionfile` writes: a 4-byte header, ``n``,
4 pad bytes, ``n`` int64 times, then per channel its count and float32 values.

Per bucket the plot gets two points — the channel's minimum and its maximum, placed at the
bucket's first and last sample — so a spike one sample wide still shows at any zoom. An
empty bucket between filled ones becomes a break in the line, not a bridge across a gap.
When the window holds few enough samples, they are sent as they are.
"""

from __future__ import annotations

import math
import mmap
import struct
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from edge_recorder.errors import SessionFileError
from edge_recorder.sessionfile import CDR_LE_HEADER, FLOAT_FIELDS, sensor_of

# MCAP records (mcap.dev/spec): opcode u8, length u64, then the fields
MCAP_MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEAD = struct.Struct("<BQ")
_FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary start, summary offsets start, crc
_CHUNK_HEAD = struct.Struct("<BQQQQI")  # opcode, length, start, end, uncompressed size, crc
_CHUNK_INDEX_HEAD = struct.Struct("<QQQ")  # first log time, last log time, chunk offset
_MESSAGE_HEAD_BYTES = 22  # channel id u16, sequence u32, log time u64, publish time u64
_OP_FOOTER, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x02, 0x04, 0x05, 0x06
_OP_CHUNK_INDEX, _OP_SUMMARY_OFFSET = 0x08, 0x0E
BATCH_BYTES = 4 << 20  # decompressed chunk data folded into the buckets at once
MAX_BUCKETS = 4000  # a plot is never wider than this many pixels
LOG_TIME_SLACK_NS = 10**9  # a message's log time is its first sample: later ones follow it


@dataclass
class _Sensor:
    """One sensor's buckets while a window is read (and its raw samples while few)."""

    buckets: int
    lo: npt.NDArray[np.float64]  # per bucket: first and last sample time (ns)
    hi: npt.NDArray[np.float64]
    mins: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    maxs: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    raw_t: list[npt.NDArray[np.int64]] | None = field(default_factory=list)
    raw: dict[str, list[npt.NDArray[np.float32]]] = field(default_factory=lambda: defaultdict(list))
    samples: int = 0


def envelope(path: Path, start_ns: int, end_ns: int, buckets: int, origin_ns: int
             ) -> dict[str, dict[str, list[float | None]]]:
    """Per sensor, plot data for samples with ``start_ns <= t_ns < end_ns``.

    ``{"imu0": {"x": [...], "ax": [...], ...}}``: ``x`` in seconds since ``origin_ns``, one
    list per channel the sensor has, ``None`` where the line breaks; at most about
    ``2 * buckets`` points. Raises :class:`SessionFileError` for a file that is not a finished
    session file or whose chunk CRC does not match.
    """
    if not 1 <= buckets <= MAX_BUCKETS or end_ns <= start_ns:
        raise ValueError(f"buckets must be 1-{MAX_BUCKETS} and the window not empty")
    edges = np.linspace(start_ns, end_ns, buckets + 1)
    sensors: dict[str, _Sensor] = {}
    for name, t, values in _batches(path, start_ns, end_ns):
        s = sensors.get(name)
        if s is None:
            s = sensors[name] = _Sensor(buckets, np.full(buckets, np.inf),
                                        np.full(buckets, -np.inf))
        _fold(s, edges, t, values)
    return {name: _plot_data(s, edges, origin_ns) for name, s in sorted(sensors.items())}


def _fold(s: _Sensor, edges: npt.NDArray[np.float64], t: npt.NDArray[np.int64],
          values: dict[str, npt.NDArray[np.float32]]) -> None:
    """Add one batch of one sensor's samples (sorted by time) to its buckets."""
    keep = (t >= edges[0]) & (t < edges[-1])
    if not keep.all():
        t, values = t[keep], {k: v[keep] for k, v in values.items()}
    if not len(t):
        return
    s.samples += len(t)
    if s.raw_t is not None:
        if s.samples <= 2 * s.buckets:
            s.raw_t.append(t)
            for k, v in values.items():
                s.raw[k].append(v)
        else:
            s.raw_t, s.raw = None, defaultdict(list)
    idx = np.searchsorted(t, edges[1:-1], side="left")
    bounds = np.concatenate(([0], idx, [len(t)]))
    filled = np.nonzero(bounds[1:] > bounds[:-1])[0]
    starts = bounds[filled]
    tf = t.astype(np.float64)
    np.minimum.at(s.lo, filled, tf[starts])
    np.maximum.at(s.hi, filled, tf[bounds[filled + 1] - 1])
    for k, v in values.items():
        if k not in s.mins:
            s.mins[k] = np.full(s.buckets, np.inf, np.float32)
            s.maxs[k] = np.full(s.buckets, -np.inf, np.float32)
        np.minimum.at(s.mins[k], filled, np.minimum.reduceat(v, starts))
        np.maximum.at(s.maxs[k], filled, np.maximum.reduceat(v, starts))


def _plot_data(s: _Sensor, edges: npt.NDArray[np.float64], origin_ns: int
               ) -> dict[str, list[float | None]]:
    names = sorted(s.mins, key=FLOAT_FIELDS.index)
    if s.raw_t is not None:  # few samples: as they are
        t = np.concatenate(s.raw_t)
        order = np.argsort(t, kind="stable")
        xs = t[order].astype(np.float64)
        cols = {k: np.concatenate(s.raw[k])[order] for k in names}
        dt = np.diff(xs)
        period = float(np.median(dt)) if len(dt) else 0.0
        bucket_ns = (edges[-1] - edges[0]) / s.buckets
        breaks: list[int] = (np.nonzero(dt > max(3 * bucket_ns, 10 * period))[0] + 1).tolist()
        out: dict[str, list[float | None]] = {"x": _seconds(xs, origin_ns)}
        for k in names:
            out[k] = _rounded(cols[k])
        # a break: one point of None values just after the last sample before a gap
        for b in reversed(breaks):
            for k, v in out.items():
                v.insert(b, round((xs[b - 1] + 1 - origin_ns) / 1e9, 6) if k == "x" else None)
        return out
    filled = np.nonzero(np.isfinite(s.lo))[0]
    x = np.empty(2 * len(filled))
    x[0::2], x[1::2] = s.lo[filled], s.hi[filled]
    out = {"x": _seconds(x, origin_ns)}
    for k in names:
        y = np.empty(2 * len(filled), np.float32)
        y[0::2], y[1::2] = s.mins[k][filled], s.maxs[k][filled]
        out[k] = _rounded(y)
    for b in reversed(np.nonzero(np.diff(filled) > 1)[0].tolist()):
        pos = 2 * (b + 1)
        for k, v in out.items():
            v.insert(pos, round((edges[filled[b] + 1] - origin_ns) / 1e9, 6) if k == "x"
                     else None)
    return out


def _seconds(t: npt.NDArray[np.float64], origin_ns: int) -> list[float | None]:
    return [round(v, 6) for v in ((t - origin_ns) / 1e9).tolist()]


def _rounded(v: npt.NDArray[np.float32]) -> list[float | None]:
    """float32 holds ~7 significant digits; 6 are plenty for a plot and keep the JSON small."""
    return [float(f"{x:.6g}") if math.isfinite(x) else None for x in v.tolist()]


# --- reading ----------------------------------------------------------------------------

def _batches(path: Path, start_ns: int | None, end_ns: int | None
             ) -> Iterator[tuple[str, npt.NDArray[np.int64], dict[str, npt.NDArray[np.float32]]]]:
    """``(sensor, t_ns, {channel: values})`` per batch of chunks meeting the window."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                names, chunks = _summary(view, path)
                decompressor = zstandard.ZstdDecompressor()
                pending: list[bytes] = []
                size = 0
                for start, end, offset in chunks:
                    if (end_ns is not None and start >= end_ns) or \
                            (start_ns is not None and end < start_ns - LOG_TIME_SLACK_NS):
                        continue
                    pending.append(_chunk_records(view, offset, decompressor, path))
                    size += len(pending[-1])
                    if size >= BATCH_BYTES:
                        yield from _decode_batch(pending, names)
                        pending, size = [], 0
                if pending:
                    yield from _decode_batch(pending, names)
            finally:
                view.release()
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, struct.error, IndexError, zstandard.ZstdError) as exc:
        raise SessionFileError(f"{path}: damaged session file ({type(exc).__name__}: "
                               f"{exc})") from exc


def _summary(data: memoryview, path: Path
             ) -> tuple[dict[int, str | None], list[tuple[int, int, int]]]:
    """From the summary section: channel id → sensor, and per chunk (first log time, last
    log time, file offset) in file order. Read with ``struct``: a 1-hour file has ~7,200."""
    if bytes(data[:8]) != MCAP_MAGIC or bytes(data[-8:]) != MCAP_MAGIC:
        raise SessionFileError(f"{path}: not a finished MCAP file (magic bytes missing)")
    footer = len(data) - 8 - _FOOTER.size
    opcode, _length, summary_start, _offsets, _crc = _FOOTER.unpack_from(data, footer)
    if opcode != _OP_FOOTER or not 0 < summary_start <= footer:
        raise SessionFileError(f"{path}: no summary section; not a finished session file")
    names: dict[int, str | None] = {}
    chunks: list[tuple[int, int, int]] = []
    pos = summary_start
    while pos < footer:
        opcode, length = _RECORD_HEAD.unpack_from(data, pos)
        body = pos + 9
        if opcode == _OP_CHANNEL:
            (cid,) = struct.unpack_from("<H", data, body)
            (topic_len,) = struct.unpack_from("<I", data, body + 4)
            names[cid] = sensor_of(bytes(data[body + 8:body + 8 + topic_len]).decode())
        elif opcode == _OP_CHUNK_INDEX:
            start, end, offset = _CHUNK_INDEX_HEAD.unpack_from(data, body)
            chunks.append((start, end, offset))
        elif opcode in (_OP_SUMMARY_OFFSET, _OP_FOOTER):
            break
        pos = body + length
    chunks.sort(key=lambda c: c[2])
    return names, chunks


def _chunk_records(data: memoryview, offset: int, decompressor: zstandard.ZstdDecompressor,
                   path: Path) -> bytes:
    """The records inside the chunk at ``offset``, decompressed and CRC-checked."""
    opcode, length, _start, _end, size, crc = _CHUNK_HEAD.unpack_from(data, offset)
    if opcode != _OP_CHUNK:
        raise ValueError(f"no chunk at byte {offset}")
    pos = offset + _CHUNK_HEAD.size
    (name_len,) = struct.unpack_from("<I", data, pos)
    compression = bytes(data[pos + 4:pos + 4 + name_len]).decode()
    (data_len,) = struct.unpack_from("<Q", data, pos + 4 + name_len)
    pos += 12 + name_len
    if pos + data_len > offset + 9 + length:
        raise ValueError(f"the chunk at byte {offset} is longer than its record")
    if compression == "zstd":
        records = decompressor.decompress(data[pos:pos + data_len], max_output_size=size)
    elif not compression:
        records = bytes(data[pos:pos + data_len])
    else:
        raise SessionFileError(f"{path}: chunk compression {compression!r} is not one this "
                               "recorder writes")
    if len(records) != size or (crc and zlib.crc32(records) != crc):
        raise SessionFileError(f"{path}: damaged session file (the chunk at byte {offset} "
                               "fails its CRC)")
    return records


def _decode_batch(chunks: list[bytes], names: dict[int, str | None]
                  ) -> Iterator[tuple[str, npt.NDArray[np.int64], dict[str, Any]]]:
    """Every sensor's samples in these chunks, sorted by time."""
    payloads: dict[str, dict[int, list[memoryview]]] = defaultdict(lambda: defaultdict(list))
    for records in chunks:
        view = memoryview(records)
        pos, end = 0, len(records)
        while pos < end:
            opcode, length = _RECORD_HEAD.unpack_from(records, pos)
            pos += 9
            if opcode == _OP_MESSAGE:
                name = names.get(records[pos] | records[pos + 1] << 8)
                if name is not None:
                    payload = view[pos + _MESSAGE_HEAD_BYTES:pos + length]
                    payloads[name][len(payload)].append(payload)
            pos += length
    for name, by_size in payloads.items():
        times: list[npt.NDArray[np.int64]] = []
        cols: dict[str, list[npt.NDArray[np.float32]]] = defaultdict(list)
        for size, group in by_size.items():
            raw = np.frombuffer(b"".join(group), np.uint8).reshape(len(group), size)
            if not (raw[:, :4] == np.frombuffer(CDR_LE_HEADER, np.uint8)).all():
                raise ValueError("not a little-endian CDR message")
            counts = np.ascontiguousarray(raw[:, 4:8]).view("<u4").reshape(-1)
            for n in np.unique(counts).tolist():
                _split(raw if counts[0] == counts[-1] == n and (counts == n).all()
                       else raw[counts == n], size, n, times, cols)
        t = np.concatenate(times)
        values = {k: np.concatenate(v) for k, v in cols.items() if sum(map(len, v)) == len(t)}
        if len(t) > 1 and not (t[1:] >= t[:-1]).all():
            order = np.argsort(t, kind="stable")
            t, values = t[order], {k: v[order] for k, v in values.items()}
        yield name, t, values


def _split(raw: npt.NDArray[np.uint8], size: int, n: int, times: list[Any],
           cols: dict[str, list[Any]]) -> None:
    """Messages of ``size`` bytes holding ``n`` samples each (the rows of ``raw``) → columns."""
    first = raw[0].tobytes()
    offset, layout = 12 + 8 * n, []
    for name in FLOAT_FIELDS:
        (m,) = struct.unpack_from("<I", first, offset)
        layout.append((name, offset + 4, m))
        offset += 4 + 4 * m
    if offset != size:
        raise ValueError(f"a message of {size} bytes does not match its sample counts")
    times.append(np.ascontiguousarray(raw[:, 12:12 + 8 * n]).view("<i8").reshape(-1))
    for name, start, m in layout:
        if m == n and n:
            cols[name].append(np.ascontiguousarray(raw[:, start:start + 4 * m])
                              .view("<f4").reshape(-1))
