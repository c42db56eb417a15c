"""Exports of one session file, each streamed: memory does not grow with the session.

Every exporter is a function writing to a file object (or, for Edge Impulse, one file
object per run), so the CLI and the web console share them:

- :func:`write_csv`: ``sensor,t_ns,ax,ay,az,gx,gy,gz[,temp_c]``, one row per sample, rows
  ordered by ``t_ns`` within each sensor, sensors by name (the contract's CSV);
- :func:`write_parquet`: the same columns plus ``time`` (UTC timestamp), Parquet via
  pyarrow (``[data]`` extra);
- Edge Impulse and ROS 2 ``sensor_msgs/msg/Imu``: :mod:`edge_recorder.query.edge_impulse`,
  :mod:`edge_recorder.query.ros2_imu`.

``progress`` (optional) is called with the fraction done, 0.0 to 1.0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from edge_recorder.errors import SessionFileError, UsageError
from edge_recorder.sensors.base import CHANNELS
from edge_recorder.sessionfile import SessionFile

BASE_COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")
Progress = Callable[[float], None]


class SampleCounter:
    """Turns samples written into a fraction of the session's samples for ``progress``."""

    def __init__(self, session: SessionFile, progress: Progress | None, passes: int = 1) -> None:
        sensors = session.manifest.get("sensors") or []
        total = sum(int(s.get("samples") or 0) for s in sensors if isinstance(s, dict))
        self.total = max(1, total * passes)
        self.done = 0
        self.progress = progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total))


def write_csv(session: SessionFile, out: IO[str], *, progress: Progress | None = None) -> int:
    """Write the session's samples as CSV, one sensor after another; return the rows.

    Messages are read in file order, where each sensor's samples already rise in time
    (the recorder appends them so); a sample that goes back in time is an error rather
    than a silently unsorted file.
    """
    temps = session.has_temperature()
    has_temp = any(temps.values())
    columns = [c for c in CHANNELS if c in BASE_COLUMNS or (c == "temp_c" and has_temp)]
    out.write(",".join(["sensor", "t_ns", *columns]) + "\n")
    counter = SampleCounter(session, progress)
    rows = 0
    for sensor in sorted(temps):
        # float32 in the file: 7 significant digits say all it holds
        fmt = f"{sensor},%d" + ",%.7g" * 6 + (",%.7g" if temps[sensor] else ",") * has_temp + "\n"
        last = None
        for _name, batch in session.batches(sensor):
            t = batch["t_ns"]
            if not t:
                continue
            if last is not None and t[0] <= last:
                raise SessionFileError(f"{session.path}: sensor {sensor} goes back in time at "
                                 f"t_ns {t[0]}; cannot stream it in order")
            last = t[-1]
            cols = [batch[c] if c in batch else [float("nan")] * len(t)
                    for c in columns if c != "temp_c" or temps[sensor]]
            out.write("".join([fmt % row for row in zip(t, *cols, strict=True)]))
            rows += len(t)
            counter.add(len(t))
    return rows


def write_parquet(session: SessionFile, out: IO[bytes], *,
                  progress: Progress | None = None, row_group_rows: int = 262_144) -> int:
    """Write the samples as Parquet (one row group per ``row_group_rows``); return the rows."""
    try:
        import numpy  # noqa: F401  (the batches are built with it)
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError("--format parquet needs pyarrow: "
                         "pip install 'edge-recorder[data]'") from exc
    temps = session.has_temperature()
    has_temp = any(temps.values())
    fields = [pa.field("sensor", pa.string()),
              pa.field("t_ns", pa.int64()), pa.field("time", pa.timestamp("ns", tz="UTC"))]
    floats = [c for c in CHANNELS if c in BASE_COLUMNS or (c == "temp_c" and has_temp)]
    fields += [pa.field(c, pa.float32()) for c in floats]
    schema = pa.schema(fields, metadata={"edge_recorder.units":
                                         "a*: m/s^2; g*: rad/s; temp_c: degC"})
    counter = SampleCounter(session, progress)
    rows = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for sensor in sorted(temps):
            pending: list[dict[str, list[Any]]] = []
            for _name, batch in session.batches(sensor):
                pending.append(batch)
                n = len(batch["t_ns"])
                rows += n
                counter.add(n)
                if sum(len(b["t_ns"]) for b in pending) >= row_group_rows:
                    writer.write_batch(_record_batch(schema, sensor, pending, floats))
                    pending = []
            if pending:
                writer.write_batch(_record_batch(schema, sensor, pending, floats))
    return rows


def _record_batch(schema: Any, sensor: str, pending: list[dict[str, list[Any]]],
                  floats: list[str]) -> Any:
    import numpy as np
    import pyarrow as pa

    n = sum(len(b["t_ns"]) for b in pending)
    t = np.fromiter((x for b in pending for x in b["t_ns"]), dtype=np.int64, count=n)
    arrays: list[Any] = [pa.array([sensor]).take(pa.array(np.zeros(n, dtype=np.int32))),
                         pa.array(t), pa.array(t.view("datetime64[ns]"),
                                               type=pa.timestamp("ns", tz="UTC"))]
    for c in floats:
        if all(c in b for b in pending):
            arrays.append(pa.array(np.fromiter((x for b in pending for x in b[c]),
                                                dtype=np.float32, count=n)))
        else:
            arrays.append(pa.array(np.fromiter(
                (x for b in pending for x in b.get(c, [float("nan")] * len(b["t_ns"]))),
                dtype=np.float32, count=n)))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
