"""The session file format (SPEC §5): one MCAP file per session, owned by this module.

Inside: one channel per sensor (topic ``imu/{name}``), JSON messages with an embedded
JSON Schema, each message a batch of consecutive samples with one timestamp per sample
(``t_ns``, ns since the UNIX epoch) and one array per channel in SI units. Chunks are
zstd-compressed and closed at every :meth:`SessionWriter.flush`, so a crash loses only
what came after the last flush. The manifest is a metadata record named ``session``:
every field as a string, plus ``manifest``, the whole manifest as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
from edge_recorder.sampling.ring import Block
from edge_recorder.sensors.base import CHANNELS

SCHEMA_NAME = "edge_recorder.ImuSamples"
TOPIC_PREFIX = "imu/"
PROFILE = "edge-recorder"
FILE_ONLY_FIELDS = ("bytes", "sha256", "parts")  # about the file, so not inside it
DIGITS = {"ax": 5, "ay": 5, "az": 5, "gx": 6, "gy": 6, "gz": 6, "temp_c": 3}

SCHEMA = {
    "title": SCHEMA_NAME,
    "description": "A batch of consecutive IMU samples. Element i of every array is sample i.",
    "type": "object",
    "properties": {
        "t_ns": {"type": "array", "items": {"type": "integer"},
                 "description": "sampling instant, ns since the UNIX epoch"},
        **{c: {"type": "array", "items": {"type": "number"},
               "description": {"a": "acceleration, m/s²", "g": "angular rate, rad/s",
                               "t": "temperature, °C"}[c[0]]} for c in CHANNELS},
    },
    "required": ["t_ns"],
}


@dataclass(frozen=True)
class ChannelInfo:
    """What a session file says about one sensor."""

    name: str
    driver: str
    rate_hz: float


def encode_block(block: Block) -> bytes:
    """One MCAP message: the block's samples as JSON arrays, rounded to the chips' resolution."""
    doc: dict[str, Any] = {"t_ns": block.t_ns}
    for name, column in zip(CHANNELS, block.columns, strict=False):  # temp_c is optional
        digits = DIGITS[name]
        doc[name] = [round(v, digits) for v in column]
    return json.dumps(doc, separators=(",", ":")).encode()


class SessionWriter:
    """Writes one session file while it records; :meth:`finish` makes it complete."""

    def __init__(self, path: Path, sensors: list[ChannelInfo], *, chunk_bytes: int = 1 << 20):
        self.path = path
        self._file: IO[bytes] | None = open(path, "xb")  # noqa: SIM115 (closed in finish/abort)
        self._writer = Writer(self._file, chunk_size=chunk_bytes,
                              compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library=f"edge-recorder {__version__}")
        schema_id = self._writer.register_schema(SCHEMA_NAME, "jsonschema",
                                                 json.dumps(SCHEMA).encode())
        self._channels: dict[str, int] = {}
        for s in sensors:
            self._channels[s.name] = self._writer.register_channel(
                TOPIC_PREFIX + s.name, "json", schema_id,
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
        inner = {k: v for k, v in manifest.items() if k not in FILE_ONLY_FIELDS}
        record = {k: v if isinstance(v, str) else json.dumps(v) for k, v in inner.items()}
        record["manifest"] = json.dumps(inner)
        self._writer.add_metadata("session", record)
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
                yield channel.topic[len(TOPIC_PREFIX):], json.loads(message.data)
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
                    t_ns = json.loads(record.data)["t_ns"]
                except (ValueError, KeyError):
                    continue
                if not t_ns:
                    continue
                name = channels[record.channel_id].topic[len(TOPIC_PREFIX):]
                out.messages.append((name, record.log_time, record.data))
                out.samples[name] += len(t_ns)
                out.last_t_ns = max(out.last_t_ns or 0, t_ns[-1])
    return out
