"""The session file format (SPEC §5): one MCAP file per session, owned by this module.

Inside: one channel per sensor (topic ``imu/{name}``), messages in ROS 2 CDR with the
``ros2msg`` schema embedded (MCAP's well-known registry; Foxglove, the mcap CLI and
rosbag2 decode it), each message a batch of consecutive samples with one timestamp per
sample (``t_ns``, int64 ns since the UNIX epoch) and one float32 array per channel in SI
units. float32 keeps 24 bits, more than the chips' 16-bit converters deliver. Chunks are
zstd-compressed and closed at every :meth:`SessionWriter.flush`, so a crash loses only
what came after the last flush. The manifest is a metadata record named ``session``:
every field as a string, plus ``manifest``, the whole manifest as JSON.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from edge_recorder import __version__
from edge_recorder.errors import SessionFileError
from edge_recorder.fsutil import move_durable
from edge_recorder.sampling.ring import Block
from edge_recorder.sensors.base import CHANNELS

SCHEMA_NAME = "edge_recorder/msg/ImuSamples"
TOPIC_PREFIX = "imu/"
PROFILE = "edge-recorder"
FILE_ONLY_FIELDS = ("bytes", "sha256", "parts")  # about the file, so not inside it
FLOAT_FIELDS = CHANNELS  # ax ay az (m/s²), gx gy gz (rad/s), temp_c (°C; empty if none)

SCHEMA = (
    "# A batch of consecutive IMU samples; element i of every array is sample i.\n"
    "# t_ns: sampling instant, ns since the UNIX epoch\n"
    "# ax ay az: acceleration, m/s^2; gx gy gz: angular rate, rad/s\n"
    "# temp_c: temperature, degC (empty when the sensor does not batch it)\n"
    "int64[] t_ns\n" + "".join(f"float32[] {name}\n" for name in FLOAT_FIELDS)
)
CDR_LE_HEADER = b"\x00\x01\x00\x00"


@dataclass(frozen=True)
class ChannelInfo:
    """What a session file says about one sensor."""

    name: str
    driver: str
    rate_hz: float


def encode_block(block: Block, offset_ns: int = 0) -> bytes:
    """One MCAP message: the block as a ROS 2 ``ImuSamples`` message in CDR (little-endian).

    ``offset_ns`` maps the ring's monotonic instants to the wall clock (``t_ns`` in the file
    = ring instant + offset). Each float array is one ``struct.pack`` call. Offsets are
    aligned relative to the byte after the 4-byte encapsulation header, as CDR requires.
    """
    n = len(block.t_ns)
    length = struct.pack("<I", n)
    t_ns = array("q", [t + offset_ns for t in block.t_ns]) if offset_ns else block.t_ns
    # t_ns at offset 0: uint32 length, 4 bytes padding to align the int64s to 8
    parts = [CDR_LE_HEADER, length, b"\x00\x00\x00\x00", _packed("q", t_ns)]
    for i in range(len(FLOAT_FIELDS)):
        if i < len(block.columns):
            parts += (length, _packed("f", block.columns[i]))
        else:
            parts.append(b"\x00\x00\x00\x00")  # an empty sequence
    return b"".join(parts)


def _packed(typecode: str, values: Sequence[Any]) -> bytes:
    """Little-endian bytes of an array (the ring's blocks already are arrays)."""
    packed = values if isinstance(values, array) and values.typecode == typecode \
        else array(typecode, values)
    if sys.byteorder != "little":
        packed = array(typecode, packed)
        packed.byteswap()
    return packed.tobytes()


def decode_samples(data: bytes) -> dict[str, list[Any]]:
    """The inverse of :func:`encode_block`: ``{"t_ns": [...], "ax": [...], ...}``.

    ``temp_c`` is left out when the sensor did not record it.
    """
    if data[:4] != CDR_LE_HEADER:
        raise ValueError("not a little-endian CDR message")
    body = memoryview(data)[4:]
    (n,) = struct.unpack_from("<I", body, 0)
    out: dict[str, list[Any]] = {"t_ns": list(struct.unpack_from(f"<{n}q", body, 8))}
    offset = 8 + 8 * n
    for name in FLOAT_FIELDS:
        (m,) = struct.unpack_from("<I", body, offset)
        if m or name != "temp_c":
            out[name] = list(struct.unpack_from(f"<{m}f", body, offset + 4))
        offset += 4 + 4 * m
    return out


def session_record(manifest: dict[str, Any]) -> dict[str, str]:
    """The ``session`` metadata record: every field as a string, plus the whole as JSON."""
    inner = {k: v for k, v in manifest.items() if k not in FILE_ONLY_FIELDS}
    record = {k: v if isinstance(v, str) else json.dumps(v) for k, v in inner.items()}
    record["manifest"] = json.dumps(inner)
    return record


def shift_samples(data: bytes, delta_ns: int) -> bytes:
    """An :func:`encode_block` message with every ``t_ns`` moved by ``delta_ns``."""
    if data[:4] != CDR_LE_HEADER:
        raise ValueError("not a little-endian CDR message")
    (n,) = struct.unpack_from("<I", data, 4)
    start, end = 12, 12 + 8 * n
    t_ns = struct.unpack_from(f"<{n}q", data, start)
    return data[:start] + struct.pack(f"<{n}q", *(t + delta_ns for t in t_ns)) + data[end:]


def restamp(path: Path, delta_ns: int, manifest: dict[str, Any],
            out_path: Path | None = None) -> None:
    """Rewrite a finished session file on another time base: every sample's ``t_ns`` and
    every message's log and publish time moved by ``delta_ns``, the ``session`` record
    replaced by ``manifest``; everything else (header, schemas, channels, other metadata)
    copied as it is. Written to ``out_path`` (fsync'd), or beside the file and then renamed
    over it.
    """
    tmp = out_path or path.with_name(path.name + ".restamp")
    with open(path, "rb") as src:
        reader = _open_reader(src, path)
        header = reader.get_header()
        summary = reader.get_summary()
        with open(tmp, "wb") as out:
            writer = Writer(out, compression=CompressionType.ZSTD)
            writer.start(profile=header.profile, library=header.library)
            schema_ids: dict[int, int] = {}
            channel_ids: dict[int, int] = {}
            if summary is not None:
                for schema in summary.schemas.values():
                    schema_ids[schema.id] = writer.register_schema(
                        schema.name, schema.encoding, schema.data)
                for ch in summary.channels.values():
                    channel_ids[ch.id] = writer.register_channel(
                        ch.topic, ch.message_encoding, schema_ids.get(ch.schema_id, 0),
                        dict(ch.metadata))
            for _schema, ch, message in reader.iter_messages(log_time_order=False):
                data = shift_samples(message.data, delta_ns) \
                    if ch.topic.startswith(TOPIC_PREFIX) else message.data
                writer.add_message(channel_ids[ch.id], message.log_time + delta_ns, data,
                                   message.publish_time + delta_ns, message.sequence)
            for record in reader.iter_metadata():
                if record.name != "session":
                    writer.add_metadata(record.name, dict(record.metadata))
            writer.add_metadata("session", session_record(manifest))
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
    if out_path is None:
        move_durable(tmp, path)


class SessionWriter:
    """Writes one session file while it records; :meth:`finish` makes it complete."""

    def __init__(self, path: Path, sensors: list[ChannelInfo], *, chunk_bytes: int = 1 << 20):
        self.path = path
        self._file: IO[bytes] | None = open(path, "xb")  # noqa: SIM115 (closed in finish/abort)
        self._writer = Writer(self._file, chunk_size=chunk_bytes,
                              compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library=f"edge-recorder {__version__}")
        schema_id = self._writer.register_schema(SCHEMA_NAME, "ros2msg", SCHEMA.encode())
        self._channels: dict[str, int] = {}
        for s in sensors:
            self._channels[s.name] = self._writer.register_channel(
                TOPIC_PREFIX + s.name, "cdr", schema_id,
                {"driver": s.driver, "rate_hz": f"{s.rate_hz:g}",
                 "units": "t_ns: ns since epoch; a*: m/s^2; g*: rad/s; temp_c: degC"})
        self._sequence = 0
        self.flush()

    def write(self, sensor: str, t0_ns: int, data: bytes) -> None:
        """Append one message: ``data`` from :func:`encode_block`, ``t0_ns`` its first sample."""
        self._sequence += 1
        self._writer.add_message(self._channels[sensor], t0_ns, data, t0_ns, self._sequence)

    def flush(self) -> None:
        """Close the open chunk and make everything so far durable (fsync)."""
        assert self._file is not None
        self._writer.flush()
        os.fsync(self._file.fileno())

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the ``session`` metadata record and the index, fsync and close."""
        assert self._file is not None
        self._writer.add_metadata("session", session_record(manifest))
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def abort(self) -> None:
        """Close without finishing (the file stays, for recovery)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_reader(stream: IO[bytes], path: Path) -> Any:
    try:
        return make_reader(stream)
    except (McapError, ValueError, OSError) as exc:
        raise SessionFileError(f"{path}: not a readable MCAP session file ({exc})") from exc


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest stored in a finished session file."""
    try:
        with open(path, "rb") as f:
            reader = _open_reader(f, path)
            for record in reader.iter_metadata():
                if record.name == "session":
                    return dict(json.loads(record.metadata["manifest"]))
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (McapError, ValueError, KeyError) as exc:
        raise SessionFileError(f"{path}: damaged session file ({exc})") from exc
    raise SessionFileError(f"{path}: no 'session' metadata record; not an edge-recorder session")


def iter_batches(path: Path) -> Iterator[tuple[str, dict[str, list[Any]]]]:
    """``(sensor name, {"t_ns": [...], "ax": [...], ...})`` per stored message, in file order."""
    try:
        with open(path, "rb") as f:
            reader = _open_reader(f, path)
            for _schema, channel, message in reader.iter_messages(log_time_order=False):
                if not channel.topic.startswith(TOPIC_PREFIX):
                    continue
                yield channel.topic[len(TOPIC_PREFIX):], decode_samples(message.data)
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (McapError, ValueError) as exc:
        raise SessionFileError(f"{path}: damaged session file ({exc})") from exc


@dataclass
class Salvaged:
    """What could be read back from an unfinished session file."""

    channels: list[ChannelInfo]
    messages: list[tuple[str, int, bytes]]  # (sensor, first t_ns, data)
    samples: dict[str, int]
    last_t_ns: int | None


def salvage(path: Path) -> Salvaged:
    """Read every complete chunk of a file cut short by a crash or power loss."""
    channels: dict[int, Channel] = {}
    out = Salvaged([], [], {}, None)
    with open(path, "rb") as f:
        records = StreamReader(f, validate_crcs=True).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception:  # the torn end of the file: everything before it is kept
                break
            if isinstance(record, Channel) and record.topic.startswith(TOPIC_PREFIX):
                channels[record.id] = record
                name = record.topic[len(TOPIC_PREFIX):]
                out.channels.append(ChannelInfo(name, record.metadata.get("driver", "?"),
                                                float(record.metadata.get("rate_hz", 0))))
                out.samples.setdefault(name, 0)
            elif isinstance(record, Message) and record.channel_id in channels:
                try:
                    t_ns = decode_samples(record.data)["t_ns"]
                except (ValueError, struct.error):
                    continue
                if not t_ns:
                    continue
                name = channels[record.channel_id].topic[len(TOPIC_PREFIX):]
                out.messages.append((name, record.log_time, record.data))
                out.samples[name] += len(t_ns)
                out.last_t_ns = max(out.last_t_ns or 0, t_ns[-1])
    return out
