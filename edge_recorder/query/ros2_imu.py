"""ROS 2 ``sensor_msgs/msg/Imu`` export: one standard message per sample, in MCAP.

The session file batches samples (what lets the Pi record at a few µs per sample); tools
that plot one value per message (Foxglove's Plot panel, PlotJuggler, rqt_plot) want one
message per sample in a standard type. This writes exactly that, under MCAP's ``ros2``
profile: topic ``/imu/{sensor}``, ``header.stamp`` the sample's instant, ``frame_id`` the
sensor name, ``linear_acceleration`` in m/s² and ``angular_velocity`` in rad/s. The chips
give no orientation, so, as Imu.msg asks, ``orientation_covariance[0]`` is -1; the other
covariances are all zeros ("unknown"). Temperature has no place in Imu and is left out.
The ``session`` and ``foxglove`` metadata records are copied. Streamed: memory does not
grow with the session.
"""

from __future__ import annotations

import io
import json
import struct
from typing import IO, Any

from mcap.writer import CompressionType, Writer

from edge_recorder import __version__
from edge_recorder.query.export import Progress, SampleCounter
from edge_recorder.sessionfile import OFFERED_QOS_PROFILES, TOPIC_PREFIX, SessionFile

SCHEMA_NAME = "sensor_msgs/msg/Imu"
_SEP = "=" * 80 + "\n"
# ROS 2's sensor_msgs/msg/Imu with its dependencies, in the ros2msg concatenated form
SCHEMA = (
    "std_msgs/Header header\n"
    "geometry_msgs/Quaternion orientation\n"
    "float64[9] orientation_covariance\n"
    "geometry_msgs/Vector3 angular_velocity\n"
    "float64[9] angular_velocity_covariance\n"
    "geometry_msgs/Vector3 linear_acceleration\n"
    "float64[9] linear_acceleration_covariance\n"
    + _SEP + "MSG: std_msgs/Header\n"
    "builtin_interfaces/Time stamp\n"
    "string frame_id\n"
    + _SEP + "MSG: builtin_interfaces/Time\n"
    "int32 sec\n"
    "uint32 nanosec\n"
    + _SEP + "MSG: geometry_msgs/Quaternion\n"
    "float64 x 0\n"
    "float64 y 0\n"
    "float64 z 0\n"
    "float64 w 1\n"
    + _SEP + "MSG: geometry_msgs/Vector3\n"
    "float64 x\n"
    "float64 y\n"
    "float64 z\n"
)
_CDR_LE = b"\x00\x01\x00\x00"
_ORIENTATION_UNKNOWN = (0.0, 0.0, 0.0, 1.0, -1.0, *([0.0] * 8))
_ZEROS9 = (0.0,) * 9


def imu_packer(frame_id: str) -> struct.Struct:
    """The CDR layout of one Imu message with this ``frame_id`` (little-endian).

    Body offsets count from after the 4-byte encapsulation header: stamp (int32, uint32),
    frame_id (uint32 length including the NUL, bytes, NUL), padding to 8 for the float64s.
    """
    name = frame_id.encode()
    after_string = 12 + len(name) + 1
    pad = -after_string % 8
    return struct.Struct(f"<4siII{len(name) + 1}s{pad}x4d9d3d9d3d9d")


class _Counted(io.RawIOBase):
    """A pipe as the MCAP writer needs it: it asks ``tell()`` for offsets, never seeks."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.position = out, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.out.write(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.out.flush()


def write_ros2_imu(session: SessionFile, out: IO[bytes], *,
                   progress: Progress | None = None) -> int:
    """Write every sample as one ``sensor_msgs/msg/Imu`` message; return the messages.

    ``out`` may be a pipe: the file is written front to back."""
    if not out.seekable():
        out = _Counted(out)  # type: ignore[assignment]
    writer = Writer(out, compression=CompressionType.ZSTD, enable_data_crcs=True)
    writer.start(profile="ros2", library=f"edge-recorder {__version__}")
    schema_id = writer.register_schema(SCHEMA_NAME, "ros2msg", SCHEMA.encode())
    channels: dict[str, tuple[int, struct.Struct, bytes]] = {}
    for info in session.channels:
        channel_id = writer.register_channel(
            TOPIC_PREFIX + info.name, "cdr", schema_id,
            {"offered_qos_profiles": OFFERED_QOS_PROFILES, "driver": info.driver,
             "rate_hz": f"{info.rate_hz:g}"})
        channels[info.name] = (channel_id, imu_packer(info.name), info.name.encode() + b"\0")
    sequence = 0
    counter = SampleCounter(session, progress)
    for sensor, batch in session.batches():
        channel_id, packer, frame = channels[sensor]
        pack = packer.pack
        add = writer.add_message
        for t, ax, ay, az, gx, gy, gz in zip(batch["t_ns"], batch["ax"], batch["ay"],
                                             batch["az"], batch["gx"], batch["gy"],
                                             batch["gz"], strict=True):
            sequence += 1
            data = pack(_CDR_LE, t // 1_000_000_000, t % 1_000_000_000, len(frame), frame,
                        *_ORIENTATION_UNKNOWN, gx, gy, gz, *_ZEROS9, ax, ay, az, *_ZEROS9)
            add(channel_id, t, data, t, sequence)
        counter.add(len(batch["t_ns"]))
    _copy_metadata(session, writer)
    writer.finish()  # type: ignore[no-untyped-call]
    return sequence


def _copy_metadata(session: SessionFile, writer: Writer) -> None:
    manifest = session.manifest
    record = {k: v if isinstance(v, str) else json.dumps(v) for k, v in manifest.items()}
    record["manifest"] = json.dumps(manifest)
    writer.add_metadata("session", record)
    foxglove = {"key": f"{manifest.get('session_id')}-imu"}
    if manifest.get("device_id"):
        foxglove["deviceName"] = str(manifest["device_id"])
    writer.add_metadata("foxglove", foxglove)
