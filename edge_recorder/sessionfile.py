"""The session file format (docs/contract.md §5): one MCAP file per session, owned by this module.

The file follows MCAP's ``ros2`` profile, so rosbag2, ``rosbags`` and Foxglove read it as
it is: one channel per sensor (topic ``/imu/{name}``, ``offered_qos_profiles`` in its
metadata), messages in ROS 2 CDR with the ``ros2msg`` schema embedded, each message a
batch of consecutive samples with one timestamp per sample (``t_ns``, int64 ns since the
UNIX epoch) and one float32 array per channel in SI units. float32 keeps 24 bits, more
than the chips' 16-bit converters deliver. Chunks are zstd-compressed and closed at every
:meth:`SessionWriter.flush`, so a crash loses only what came after the last flush.

Finished files carry two metadata records: ``session`` (every manifest field as a
string, plus ``manifest``, the whole manifest as JSON; Foxglove lists it with the labels
and journey) and ``foxglove`` (``deviceName``, and ``key`` = the session id, which
Foxglove's import uses to file the recording under its device and import it once).

Every read here first checks the file's CRCs (:func:`verify`): a flipped byte is a
:class:`SessionFileError`, never silently different data. Files written before the
``ros2`` profile (topics ``imu/{name}``, no data-section CRC) are still read; for those
the sha256 in the manifest beside the file stands in for the missing CRC.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import mcap.writer
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer

from edge_recorder import __version__
from edge_recorder.errors import SessionFileError
from edge_recorder.fsutil import move_durable
from edge_recorder.sampling.ring import Block
from edge_recorder.sensors.base import CHANNELS

SCHEMA_NAME = "edge_recorder/msg/ImuSamples"
TOPIC_PREFIX = "/imu/"  # ROS 2 topic names are absolute
LEGACY_TOPIC_PREFIXES = ("imu/",)  # files written before the ros2 profile
PROFILE = "ros2"
# rosbag2 writes the publishers' QoS here; these are ROS 2's sensor-data defaults
# (rmw_qos_profile_sensor_data: keep_last, depth 5, best_effort, volatile)
OFFERED_QOS_PROFILES = (
    "- history: keep_last\n  depth: 5\n  reliability: best_effort\n  durability: volatile\n"
    "  deadline:\n    sec: 0\n    nsec: 0\n  lifespan:\n    sec: 0\n    nsec: 0\n"
    "  liveliness: automatic\n  liveliness_lease_duration:\n    sec: 0\n    nsec: 0\n"
    "  avoid_ros_namespace_conventions: false\n")
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

log = logging.getLogger(__name__)


CHUNK_ZSTD_LEVEL = 2
"""zstd level of the session file's chunks. Measured on emulated sessions (benchmarks/
README.md): level 3 (zstandard's default) costs 0.03–0.08 µs more per sample for 1 % smaller
files; level 1 saves as much again but files grow 4–14 %."""


class _ZstdOneContextPerThread:
    """What mcap's Writer calls to compress a chunk, ``zstandard.compress(data)``, with one
    compression context per thread kept instead of one built for every chunk (its tables
    cost a tenth of a flush's CPU), at :data:`CHUNK_ZSTD_LEVEL`; the rest of zstandard as
    it is."""

    def __init__(self) -> None:
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        context = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = zstandard.ZstdCompressor(level=CHUNK_ZSTD_LEVEL)
        return bytes(context.compress(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(zstandard, name)


ZERO_FILL_STEP_BYTES = 256 << 10
"""How far ahead of its data, at most, a session file is extended with zeros while it
records (0 disables). fdatasync(2) commits the file's metadata only when the size changed,
so a flush that overwrites zeros in place skips the journal commit an appending one pays.
The zeros ahead grow with the file (as much as it holds, from :data:`ZERO_FILL_FIRST_BYTES`
up to this), so a short session writes few: a 60 s session of ~6 KB flushes changes its size
at ~8 of 120 flushes (benchmarks/README.md, "Zero-filled steps")."""

ZERO_FILL_FIRST_BYTES = 16 << 10
"""The zeros ahead of a new session file's first bytes."""

PAGE_BYTES = 4096


if getattr(mcap.writer, "zstandard", None) is zstandard:  # as mcap 1.x imports it
    mcap.writer.zstandard = _ZstdOneContextPerThread()  # type: ignore[assignment,attr-defined]


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
    n = len(block)
    length = struct.pack("<I", n)
    t_ns = block.times(offset_ns)
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


def foxglove_record(manifest: dict[str, Any]) -> dict[str, str]:
    """The ``foxglove`` metadata record Foxglove's import reads: ``deviceName`` files the
    recording under its device, ``key`` (the session id) makes the import idempotent."""
    record = {"key": str(manifest["session_id"])}
    if manifest.get("device_id"):
        record["deviceName"] = str(manifest["device_id"])
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
            out_path: Path | None = None,
            on_progress: Callable[[], object] | None = None) -> None:
    """Rewrite a finished session file on another time base: every sample's ``t_ns`` and
    every message's log and publish time moved by ``delta_ns``, the ``session`` record
    replaced by ``manifest``; everything else (header, schemas, channels, other metadata)
    copied as it is. Written to ``out_path`` (fsync'd), or beside the file and then renamed
    over it. ``on_progress`` is called after every message (a worker's heartbeat: an hour at
    2 kHz takes seconds on a Pi).
    """
    tmp = out_path or path.with_name(path.name + ".restamp")
    verify(path)
    with open(path, "rb") as src:
        try:
            reader = make_reader(src, validate_crcs=True)
        except (McapError, ValueError) as exc:
            raise SessionFileError(f"{path}: not a readable MCAP session file ({exc})") from exc
        header = reader.get_header()
        summary = reader.get_summary()
        with open(tmp, "wb") as out:
            writer = Writer(out, compression=CompressionType.ZSTD, enable_data_crcs=True)
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
                    if sensor_of(ch.topic) is not None else message.data
                writer.add_message(channel_ids[ch.id], message.log_time + delta_ns, data,
                                   message.publish_time + delta_ns, message.sequence)
                if on_progress is not None:
                    on_progress()
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
    """Writes one session file while it records; :meth:`finish` makes it complete.

    While it records, the file is kept up to ``zero_fill_step_bytes`` (0 disables) ahead
    of its data with zeros (:meth:`_fill_ahead`), written with ``os.pwrite`` (the buffered
    file's and mcap's position untouched), so most flushes overwrite zeros in place and
    leave the file's size as it was; :meth:`finish` trims the file to its last byte. A crash
    leaves the zeros after the last flushed chunk: :func:`salvage` reads up to them.
    """

    def __init__(self, path: Path, sensors: list[ChannelInfo], *, chunk_bytes: int = 1 << 20,
                 zero_fill_step_bytes: int = ZERO_FILL_STEP_BYTES):
        self.path = path
        self._file: IO[bytes] | None = open(path, "xb")  # noqa: SIM115 (closed in finish/abort)
        self._zero_fill_step_bytes = zero_fill_step_bytes
        self._zeroed_to = 0  # the file's size as the last zero fill left it (bytes)
        self._durable_end = 0  # the data's end at the last flush (bytes)
        self._writer = Writer(self._file, chunk_size=chunk_bytes,
                              compression=CompressionType.ZSTD, enable_data_crcs=True)
        self._writer.start(profile=PROFILE, library=f"edge-recorder {__version__}")
        schema_id = self._writer.register_schema(SCHEMA_NAME, "ros2msg", SCHEMA.encode())
        self._channels: dict[str, int] = {}
        for s in sensors:
            self._channels[s.name] = self._writer.register_channel(
                TOPIC_PREFIX + s.name, "cdr", schema_id,
                {"driver": s.driver, "rate_hz": f"{s.rate_hz:g}",
                 "units": "t_ns: ns since epoch; a*: m/s^2; g*: rad/s; temp_c: degC",
                 "offered_qos_profiles": OFFERED_QOS_PROFILES})
        self._sequence = 0
        self.flush()

    def write(self, sensor: str, t0_ns: int, data: bytes) -> None:
        """Append one message: ``data`` from :func:`encode_block`, ``t0_ns`` its first sample."""
        self._sequence += 1
        self._writer.add_message(self._channels[sensor], t0_ns, data, t0_ns, self._sequence)

    def flush(self) -> None:
        """Close the open chunk and make everything so far durable (:meth:`end_chunk`, then
        :meth:`sync`)."""
        self.end_chunk()
        self.sync()

    def end_chunk(self) -> None:
        """Close the open chunk (compressed, with its CRC) and hand it to the OS."""
        assert self._file is not None
        self._writer.flush()  # mcap's Writer flushes the buffered file too

    def sync(self) -> None:
        """Make what was handed to the OS durable: fdatasync, which writes the data and,
        when it changed, the file's size (all a reader needs) but not its times, for a
        quarter less CPU than fsync. The zero fill ahead of the data keeps the size
        unchanged at most flushes, so most skip the metadata commit too."""
        assert self._file is not None
        end = self._file.tell()
        if self._zero_fill_step_bytes and self._zeroed_to - end < self._fill_ahead(end) // 4:
            self._zero_fill(end)
        os.fdatasync(self._file.fileno())
        self._durable_end = end

    def _fill_ahead(self, end: int) -> int:
        """How many zeros to keep ahead of the data's end ``end``: as many bytes as the file
        holds, from :data:`ZERO_FILL_FIRST_BYTES` to the step. The file is extended when
        less than a quarter of that is left."""
        return min(self._zero_fill_step_bytes, max(ZERO_FILL_FIRST_BYTES, end))

    def _zero_fill(self, end: int) -> None:
        """Extend the file with zeros to :meth:`_fill_ahead` past ``end``, the data's end
        (to a page boundary). A disk too full for them (the data alone may still fit) gives
        the room back and turns the fill off for this file: it grows with its data instead,
        as without the fill."""
        assert self._file is not None
        start = max(end, self._zeroed_to)
        stop = -(-(end + self._fill_ahead(end)) // PAGE_BYTES) * PAGE_BYTES
        fd = self._file.fileno()
        try:  # pwrite(2): "The file offset is not changed" (the file is not O_APPEND)
            written = os.pwrite(fd, bytes(stop - start), start)
            if written != stop - start:  # the disk filled up part of the way
                raise OSError(errno.ENOSPC, f"{written} of {stop - start} zero bytes written")
        except OSError as exc:
            self._zero_fill_step_bytes = 0
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # the zeros stay until finish() or recovery trims them
            log.info("session file %s: cannot extend it with zeros ahead of its data "
                     "(%s); it grows with its data from here on", self.path.name,
                     f"{type(exc).__name__}: {exc}")
            return
        self._zeroed_to = stop

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the ``session`` metadata record and the index, trim the zero fill,
        fsync and close."""
        assert self._file is not None
        self._writer.add_metadata("session", session_record(manifest))
        self._writer.add_metadata("foxglove", foxglove_record(manifest))
        self._writer.finish()
        self._file.flush()
        end = self._file.tell()
        if self._zeroed_to > end:
            os.ftruncate(self._file.fileno(), end)
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def abort(self) -> None:
        """Close without finishing (the file stays, for recovery), the zeros ahead of its
        data trimmed: they go back to a disk that may be full."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                end = file.tell()  # the data's end once what is buffered is written
                file.close()
            except OSError:  # the disk is full, say: what the last flush made durable stays
                end = self._durable_end
            if self._zeroed_to > end:
                try:
                    os.truncate(self.path, end)
                except OSError:
                    pass  # recovery reads up to the zeros all the same


def sensor_of(topic: str) -> str | None:
    """The sensor name of a session channel's topic (either generation), else None."""
    for prefix in (TOPIC_PREFIX, *LEGACY_TOPIC_PREFIXES):
        if topic.startswith(prefix):
            return topic[len(prefix):]
    return None


_MAGIC = b"\x89MCAP0\r\n"
_FOOTER = struct.Struct("<BQQQI")  # opcode, record length, summary start, offsets start, crc
_DATA_END = struct.Struct("<BQI")  # opcode, record length, data section crc
_OP_FOOTER, _OP_DATA_END = 0x02, 0x0F
_CRC_BLOCK_BYTES = 1 << 20


def _crc_range(f: IO[bytes], start: int, end: int) -> int:
    crc = 0
    f.seek(start)
    left = end - start
    while left > 0:
        block = f.read(min(left, _CRC_BLOCK_BYTES))
        if not block:
            raise SessionFileError("the file ends early")
        crc = zlib.crc32(block, crc)
        left -= len(block)
    return crc


def verify(path: Path) -> bool:
    """Check a finished session file's CRCs (MCAP spec: data section and summary CRCs).

    Returns True when the whole data section is covered by its CRC (files of this
    version); for older files, written without one, the sha256 in the manifest beside
    the file is checked instead when there is one, and chunk CRCs are checked as the
    chunks are read. Raises :class:`SessionFileError` naming what does not match.
    """
    try:
        with open(path, "rb") as f:
            covered = _verify_open(f, path)
            if not covered:
                _verify_sidecar(f, path)
            return covered
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _verify_open(f: IO[bytes], path: Path) -> bool:
    size = os.fstat(f.fileno()).st_size
    if path.suffix == ".json":
        raise SessionFileError(f"{path} is a manifest; give the session file "
                               f"{path.with_suffix('.mcap').name} (or its id with --store)")
    if f.read(8) != _MAGIC:
        raise SessionFileError(f"{path}: not an MCAP file (it does not start with MCAP's "
                               "magic bytes)")
    tail = 8 + _FOOTER.size
    if size < 8 + _DATA_END.size + tail:
        raise SessionFileError(f"{path}: damaged session file (truncated: {size} bytes)")
    f.seek(size - tail)
    footer = f.read(tail)
    if footer[_FOOTER.size:] != _MAGIC:
        raise SessionFileError(f"{path}: damaged session file (no end magic: truncated or "
                               "not finished)")
    opcode, length, summary_start, _offsets, summary_crc = _FOOTER.unpack(footer[:_FOOTER.size])
    footer_start = size - tail
    if opcode != _OP_FOOTER or length != _FOOTER.size - 9 or summary_start > footer_start:
        raise SessionFileError(f"{path}: damaged session file (bad footer)")
    data_end_stop = summary_start or footer_start
    if data_end_stop < 8 + _DATA_END.size:
        raise SessionFileError(f"{path}: damaged session file (bad summary offset)")
    if summary_crc and summary_crc != _crc_range(f, data_end_stop, footer_start + 25):
        raise SessionFileError(f"{path}: damaged session file (summary CRC mismatch)")
    f.seek(data_end_stop - _DATA_END.size)
    opcode, length, data_crc = _DATA_END.unpack(f.read(_DATA_END.size))
    if opcode != _OP_DATA_END or length != 4:
        raise SessionFileError(f"{path}: damaged session file (no data-end record where the "
                               "footer says)")
    if data_crc and data_crc != _crc_range(f, 0, data_end_stop - _DATA_END.size):
        raise SessionFileError(f"{path}: damaged session file (data CRC mismatch)")
    return bool(data_crc != 0)


def _verify_sidecar(f: IO[bytes], path: Path) -> None:
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    digest = hashlib.sha256()
    f.seek(0)
    while block := f.read(_CRC_BLOCK_BYTES):
        digest.update(block)
    if digest.hexdigest() != expected:
        raise SessionFileError(f"{path}: damaged session file (its sha256 differs from the "
                               "manifest's)")


class SessionFile:
    """A finished session file opened for reading: its CRCs are checked once, on opening.

    Every reader of session files on the receiving side goes through this class, so none
    can skip the check. Raises :class:`SessionFileError` for a missing, foreign, or damaged
    file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._covered = verify(path)
        self._manifest: dict[str, Any] | None = None
        self._channels: list[ChannelInfo] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest stored in the file's ``session`` metadata record."""
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    @property
    def channels(self) -> list[ChannelInfo]:
        """The file's sensors, in channel order."""
        if self._channels is None:
            self._channels = self._read_channels()
        return self._channels

    def _reader(self, f: IO[bytes]) -> Any:
        try:
            return make_reader(f, validate_crcs=True)
        except (McapError, ValueError, OSError) as exc:
            raise SessionFileError(f"{self.path}: not a readable MCAP session file "
                                   f"({exc})") from exc

    def _read_manifest(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                for record in self._reader(f).iter_metadata():
                    if record.name == "session":
                        return dict(json.loads(record.metadata["manifest"]))
        except OSError as exc:
            raise SessionFileError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        except (McapError, ValueError, KeyError) as exc:
            raise SessionFileError(f"{self.path}: damaged session file ({exc})") from exc
        raise SessionFileError(f"{self.path}: no 'session' metadata record; not an "
                               "edge-recorder session")

    def _read_channels(self) -> list[ChannelInfo]:
        try:
            with open(self.path, "rb") as f:
                summary = self._reader(f).get_summary()
        except (McapError, ValueError, OSError) as exc:
            raise SessionFileError(f"{self.path}: damaged session file ({exc})") from exc
        if summary is None:
            raise SessionFileError(f"{self.path}: no summary section; not a finished "
                                   "session file")
        out = []
        for channel in sorted(summary.channels.values(), key=lambda c: c.id):
            name = sensor_of(channel.topic)
            if name is not None:
                out.append(ChannelInfo(name, channel.metadata.get("driver", "?"),
                                       float(channel.metadata.get("rate_hz", 0) or 0)))
        return out

    def message_span_ns(self) -> tuple[int, int]:
        """First and last message time (the first sample of the first and last message)."""
        try:
            with open(self.path, "rb") as f:
                summary = self._reader(f).get_summary()
        except (McapError, ValueError, OSError) as exc:
            raise SessionFileError(f"{self.path}: damaged session file ({exc})") from exc
        stats = summary.statistics if summary is not None else None
        if stats is None or not stats.message_count:
            return 0, 0
        return int(stats.message_start_time), int(stats.message_end_time)

    def messages(self, sensor: str | None = None) -> Iterator[tuple[str, bytes]]:
        """``(sensor name, CDR message)`` per stored message in file order.

        ``sensor`` keeps one sensor's messages only. Memory stays at about one chunk.
        """
        path = self.path
        try:
            with open(path, "rb") as f:
                names: dict[int, str | None] = {}
                # chunk CRCs matter only where no data-section CRC covered the chunks
                reader = StreamReader(f, validate_crcs=not self._covered)
                for record in reader.records:
                    if isinstance(record, Channel):
                        name = sensor_of(record.topic)
                        names[record.id] = name if sensor in (None, name) else None
                    elif isinstance(record, Message):
                        name = names.get(record.channel_id)
                        if name is not None:
                            yield name, record.data
        except OSError as exc:
            raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (McapError, ValueError, struct.error) as exc:
            raise SessionFileError(f"{path}: damaged session file ({type(exc).__name__}: "
                                   f"{exc})") from exc

    def batches(self, sensor: str | None = None) -> Iterator[tuple[str, dict[str, list[Any]]]]:
        """``(sensor name, {"t_ns": [...], "ax": [...], ...})`` per message, in file order."""
        for name, data in self.messages(sensor):
            try:
                yield name, decode_samples(data)
            except (ValueError, struct.error) as exc:
                raise SessionFileError(f"{self.path}: damaged message ({exc})") from exc

    def has_temperature(self) -> dict[str, bool]:
        """Per sensor, whether it records ``temp_c`` (from its first message)."""
        out: dict[str, bool] = {}
        wanted = {c.name for c in self.channels}
        for name, batch in self.batches():
            out.setdefault(name, "temp_c" in batch)
            if out.keys() >= wanted:
                break
        return out


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest stored in a finished session file (its CRCs checked first)."""
    return SessionFile(path).manifest


def iter_batches(path: Path) -> Iterator[tuple[str, dict[str, list[Any]]]]:
    """``(sensor name, {"t_ns": [...], "ax": [...], ...})`` per stored message, in file order."""
    return SessionFile(path).batches()


@dataclass
class Salvaged:
    """What could be read back from an unfinished session file."""

    channels: list[ChannelInfo]
    messages: list[tuple[str, int, bytes]]  # (sensor, first t_ns, data)
    samples: dict[str, int]
    last_t_ns: int | None
    last_t_ns_by_sensor: dict[str, int]
    data_end: int = 0  # bytes of the file read as whole records: where the salvage stopped
    end: str = ""  # what it stopped at


_RECORD_HEADER = struct.Struct("<BQ")  # opcode, content length


def salvage(path: Path) -> Salvaged:
    """Read every complete chunk of a file cut short by a crash or power loss.

    The file is read record by record, up to the first of: a zero opcode (the zeros a
    recording file keeps ahead of its data, so the end of what its last flush made durable;
    MCAP has no opcode 0), a record running past the end of the file (torn), a record
    that does not parse or fails its CRC, the data section's end, the end of the file.
    Everything before it is kept; no record is read that the file is too short to hold.
    """
    channels: dict[int, Channel] = {}
    out = Salvaged([], [], {}, None, {})
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(_MAGIC)) != _MAGIC:
            out.end = "no MCAP magic"
            return out
        pos = len(_MAGIC)
        while True:
            header = f.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                out.end = "a torn record header" if header else "the end of the file"
                break
            opcode, length = _RECORD_HEADER.unpack(header)
            if opcode == 0:
                out.end = "zeros (the fill ahead of the data)"
                break
            if length > size - pos - _RECORD_HEADER.size:
                out.end = "a torn record"
                break
            try:
                records = _records_of(opcode, f.read(length))
            except (McapError, ValueError, struct.error) as exc:  # a CRC error is a ValueError
                out.end = f"a damaged record ({type(exc).__name__}: {exc})"
                break
            pos += _RECORD_HEADER.size + length
            for record in records:
                _salvage_record(record, channels, out)
            if opcode in (Opcode.DATA_END, Opcode.FOOTER):
                out.end = "the data section's end"
                break
        out.data_end = pos
    return out


def _records_of(opcode: int, body: bytes) -> list[Any]:
    """The channels and messages in one record of a session file's data section."""
    stream = ReadDataStream(io.BytesIO(body))
    if opcode == Opcode.CHUNK:
        return list(breakup_chunk(Chunk.read(stream), validate_crc=True))
    if opcode == Opcode.CHANNEL:
        return [Channel.read(stream)]
    if opcode == Opcode.MESSAGE:
        return [Message.read(stream, len(body))]
    return []


def _salvage_record(record: Any, channels: dict[int, Channel], out: Salvaged) -> None:
    if isinstance(record, Channel) and sensor_of(record.topic) is not None:
        channels[record.id] = record
        name = sensor_of(record.topic) or ""
        out.channels.append(ChannelInfo(name, record.metadata.get("driver", "?"),
                                        float(record.metadata.get("rate_hz", 0))))
        out.samples.setdefault(name, 0)
    elif isinstance(record, Message) and record.channel_id in channels:
        try:
            t_ns = decode_samples(record.data)["t_ns"]
        except (ValueError, struct.error):
            return
        if not t_ns:
            return
        name = sensor_of(channels[record.channel_id].topic) or ""
        out.messages.append((name, record.log_time, record.data))
        out.samples[name] += len(t_ns)
        out.last_t_ns = max(out.last_t_ns or 0, t_ns[-1])
        out.last_t_ns_by_sensor[name] = max(out.last_t_ns_by_sensor.get(name, 0), t_ns[-1])
