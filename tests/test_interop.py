"""Session files and exports checked by tools nobody here wrote: rosbags (rosbag2's
conventions), the mcap reader with CRCs validated, pyarrow, and Edge Impulse's documented
data acquisition format; plus the Python API (load_session) on the same session.

The session is collected for real: a daemon with two emulated sensors (one of them gone
for a moment, so its manifest lists a gap), a real Mosquitto and the collector.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from edge_recorder.devtools import Broker, find_mosquitto
from tests.conftest import Client, Process, base_config, cli, wait_online, wait_until, write_config

pytestmark = pytest.mark.broker


class Collected:
    def __init__(self, path: Path, manifest: dict[str, Any], store: Path) -> None:
        self.path, self.manifest, self.store = path, manifest, store

    def samples(self, sensor: str) -> int:
        return next(s["samples"] for s in self.manifest["sensors"] if s["name"] == sensor)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Collected:
    """A 4 s session of imu0 (MPU-6050) and imu1 (ICM-42688, absent 1.5–2.1 s in)."""
    assert find_mosquitto(), "the tests need mosquitto (scripts/test.sh installs it)"
    tmp = tmp_path_factory.mktemp("collected")
    broker = Broker(tmp / "broker")
    broker.start()
    procs: list[Process] = []
    try:
        config = base_config(tmp, broker.port)
        config["sensors"] = [
            {"name": "imu0", "driver": "mpu6050", "bus": "emulated", "rate_hz": 200},
            {"name": "imu1", "driver": "icm42688", "bus": "emulated", "address": 0x69,
             "rate_hz": 200, "emulation": {"absent_s": [[1.5, 2.1]]}}]
        cfg = write_config(tmp / "device.yaml", config)
        store = tmp / "collected"
        procs.append(Process(["collect", "--host", "127.0.0.1", "--port", str(broker.port),
                              "--store", str(store)], tmp / "collector.log"))
        procs.append(Process(["run", "-c", str(cfg)], tmp / "daemon.log"))
        client = Client(broker.port)
        wait_online(client)
        client.subscribe("edge-recorder/test-pi/cmd/reply")
        client.publish("edge-recorder/test-pi/cmd", json.dumps(
            {"cmd": "start", "labels": ["walking", "bench"], "journey_id": "j-interop",
             "duration_s": 4, "request_id": "r1"}))
        reply = wait_until(lambda: next(iter(client.json_on("edge-recorder/test-pi/cmd/reply")),
                                        None), 10, "start reply")
        sid = reply["session_id"]

        def listed() -> dict[str, Any] | None:
            r = cli("sessions", "list", "--store", str(store), "--json")
            return next((json.loads(x) for x in r.stdout.splitlines()), None) \
                if r.returncode == 0 else None

        doc = wait_until(listed, 30, "the collector to store the session")
        client.close()
        assert doc["session_id"] == sid
        return Collected(Path(doc["path"]), doc, store)
    finally:
        for p in procs:
            p.stop()
        broker.stop()


def test_the_collected_session_has_a_gap_on_one_sensor(collected):
    gaps = {s["name"]: s["gaps"] for s in collected.manifest["sensors"]}
    assert gaps["imu0"] == [] and len(gaps["imu1"]) == 1
    assert collected.samples("imu0") > 600 and collected.samples("imu1") > 400


def test_rosbags_reads_the_session_as_is_with_counts_equal_to_the_manifest(collected):
    from rosbags.highlevel import AnyReader

    counts: dict[str, int] = {}
    with AnyReader([collected.path]) as reader:
        assert {c.topic for c in reader.connections} == {"/imu/imu0", "/imu/imu1"}
        for connection in reader.connections:
            assert connection.ext.serialization_format == "cdr"
            assert connection.ext.offered_qos_profiles, "rosbag2 wants the publisher's QoS"
        for connection, _t, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            assert len(msg.ax) == len(msg.t_ns) == len(msg.gz)
            counts[connection.topic] = counts.get(connection.topic, 0) + len(msg.t_ns)
    assert counts == {"/imu/imu0": collected.samples("imu0"),
                      "/imu/imu1": collected.samples("imu1")}


def test_the_mcap_reader_validates_every_crc_and_finds_the_foxglove_record(collected):
    from mcap.reader import make_reader
    from mcap.stream_reader import StreamReader

    with open(collected.path, "rb") as f:
        records = list(StreamReader(f, validate_crcs=True).records)  # data section CRC too
    data_end = next(r for r in records if type(r).__name__ == "DataEnd")
    assert data_end.data_section_crc != 0
    with open(collected.path, "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        assert reader.get_header().profile == "ros2"
        meta = {m.name: m.metadata for m in reader.iter_metadata()}
    # Foxglove's import: a "foxglove" metadata record with deviceName (and an idempotency key)
    assert meta["foxglove"] == {"deviceName": "test-pi", "key": collected.manifest["session_id"]}
    assert json.loads(meta["session"]["labels"]) == ["walking", "bench"]
    assert meta["session"]["journey_id"] == "j-interop"


def test_load_session_returns_one_row_per_sample_with_the_manifest_in_attrs(collected):
    import numpy as np

    import edge_recorder

    df = edge_recorder.load_session(collected.path)
    assert df.groupby("sensor", observed=True).size().to_dict() == {
        "imu0": collected.samples("imu0"), "imu1": collected.samples("imu1")}
    assert list(df.columns[:3]) == ["sensor", "t_ns", "time"]
    assert df["ax"].dtype == np.float32 and str(df["time"].dt.tz) == "UTC"
    for _sensor, part in df.groupby("sensor", observed=True):
        assert part["t_ns"].is_monotonic_increasing
    assert abs(float(df["az"].mean()) - 9.80665) < 0.2
    assert df.attrs["labels"] == ["walking", "bench"]
    assert df.attrs["journey_id"] == "j-interop" and df.attrs["device_id"] == "test-pi"
    assert len(df.attrs["gaps"]["imu1"]) == 1
    # by id through the store's index, and through load_sessions' filters
    by_id = edge_recorder.load_session(collected.manifest["session_id"], store=collected.store)
    assert len(by_id) == len(df)
    many = edge_recorder.load_sessions(collected.store, labels=["walking"], journey="j-interop")
    assert len(many) == len(df) and set(many["session_id"]) == {collected.manifest["session_id"]}
    assert len(edge_recorder.load_sessions(collected.store, labels=["walking", "nope"])) == 0
    assert len(edge_recorder.load_sessions(collected.store, since="2000-01-01",
                                           device="test-pi")) == len(df)


def test_load_session_matches_the_csv_export_value_for_value(collected, tmp_path):
    import csv

    import edge_recorder

    out = tmp_path / "s.csv"
    r = cli("export", str(collected.path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    df = edge_recorder.load_session(collected.path)
    assert len(rows) == len(df)
    assert [int(x["t_ns"]) for x in rows] == df["t_ns"].tolist()
    assert all(math.isclose(float(x["gx"]), float(v), rel_tol=1e-6, abs_tol=1e-12)
               for x, v in zip(rows, df["gx"], strict=True))


def _validate_edge_impulse(doc: dict[str, Any]) -> None:
    """Edge Impulse's data acquisition format, as its documentation states it
    (docs.edgeimpulse.com, "Data acquisition format"): protected.ver "v1"; protected.alg
    "HS256" or "none"; optional integer iat; signature (hex); payload.device_type string;
    interval_ms number; sensors [{name, units}]; values: one row per sample with one number
    per sensor axis."""
    assert set(doc) == {"protected", "signature", "payload"}
    assert doc["protected"]["ver"] == "v1" and doc["protected"]["alg"] in ("HS256", "none")
    assert isinstance(doc["protected"].get("iat", 0), int)
    assert isinstance(doc["signature"], str) and len(doc["signature"]) == 64
    int(doc["signature"], 16)
    payload = doc["payload"]
    assert isinstance(payload["device_type"], str) and payload["device_type"]
    assert isinstance(payload["interval_ms"], (int, float)) and payload["interval_ms"] > 0
    sensors = payload["sensors"]
    assert sensors and all(set(s) == {"name", "units"} and all(isinstance(v, str) for v in
                                                               s.values()) for s in sensors)
    assert payload["values"]
    for row in payload["values"]:
        assert len(row) == len(sensors)
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in row)


def test_edge_impulse_export_splits_at_the_gap_and_each_file_is_valid(collected, tmp_path):
    out = tmp_path / "ei"
    r = cli("export", str(collected.path), "--format", "edge-impulse", "-o", str(out))
    assert r.returncode == 0, r.stderr
    files = sorted(out.iterdir())
    sid = collected.manifest["session_id"]
    # label from the session's first label; imu0 whole, imu1 split at its gap
    assert [f.name for f in files] == [f"walking.{sid}.imu0.1.json",
                                       f"walking.{sid}.imu1.1.json",
                                       f"walking.{sid}.imu1.2.json"]
    docs = {f.name.split(".")[2] + "." + f.name.split(".")[3]: json.loads(f.read_text())
            for f in files}
    for doc in docs.values():
        _validate_edge_impulse(doc)
        assert doc["signature"] == "0" * 64 and doc["protected"]["alg"] == "none"
        assert doc["payload"]["interval_ms"] == pytest.approx(5.0, rel=0.05)
        assert [s["name"] for s in doc["payload"]["sensors"]][:6] == \
            ["accX", "accY", "accZ", "gyrX", "gyrY", "gyrZ"]
    assert len(docs["imu0.1"]["payload"]["values"]) == collected.samples("imu0")
    assert len(docs["imu1.1"]["payload"]["values"]) + len(docs["imu1.2"]["payload"]["values"]) \
        == collected.samples("imu1")
    gap = next(s for s in collected.manifest["sensors"] if s["name"] == "imu1")["gaps"][0]
    # the first run ends before the gap, the second starts after it: ~0.6 s without samples
    first_run_s = len(docs["imu1.1"]["payload"]["values"]) / 200
    assert first_run_s == pytest.approx((gap["start_ns"] - _start_ns(collected)) / 1e9, abs=0.5)


def _start_ns(collected: Collected) -> int:
    from edge_recorder.query.plot import _iso_ns

    return _iso_ns(collected.manifest["started_at"]) or 0


def test_edge_impulse_files_are_signed_with_hmac_sha256_when_a_key_is_given(collected, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("5f1d3a0b\n")
    out = tmp_path / "ei"
    r = cli("export", str(collected.path), "--format", "edge-impulse", "-o", str(out),
            "--label", "idle", "--hmac-key-file", str(key_file))
    assert r.returncode == 0, r.stderr
    files = sorted(out.iterdir())
    assert files and all(f.name.startswith("idle.") for f in files)
    for f in files:
        raw = f.read_bytes()
        doc = json.loads(raw)
        _validate_edge_impulse(doc)
        assert doc["protected"]["alg"] == "HS256"
        # the documented procedure: HMAC over the file with the signature set to 64 zeros
        unsigned = raw.replace(doc["signature"].encode(), b"0" * 64, 1)
        assert hmac.new(b"5f1d3a0b", unsigned, hashlib.sha256).hexdigest() == doc["signature"]


def test_ros2_imu_export_holds_one_standard_imu_message_per_sample(collected, tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    import edge_recorder

    out = tmp_path / "imu.mcap"
    r = cli("export", str(collected.path), "--format", "ros2-imu", "-o", str(out))
    assert r.returncode == 0, r.stderr
    # rosbags' own definition of sensor_msgs/msg/Imu, not the one embedded in the file
    store = get_typestore(Stores.ROS2_HUMBLE)
    df = edge_recorder.load_session(collected.path)
    got: dict[str, list[tuple[int, float, float]]] = {"imu0": [], "imu1": []}
    with AnyReader([out], default_typestore=store) as reader:
        assert {c.msgtype for c in reader.connections} == {"sensor_msgs/msg/Imu"}
        assert {c.topic: c.msgcount for c in reader.connections} == {
            "/imu/imu0": collected.samples("imu0"), "/imu/imu1": collected.samples("imu1")}
        for connection, t, raw in reader.messages():
            msg = store.deserialize_cdr(raw, "sensor_msgs/msg/Imu")
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert stamp == t and msg.header.frame_id == connection.topic.split("/")[-1]
            # Imu.msg: "set element 0 of the associated covariance matrix to -1" when the
            # IMU gives no orientation
            assert msg.orientation_covariance[0] == -1
            got[msg.header.frame_id].append((stamp, msg.linear_acceleration.z,
                                             msg.angular_velocity.x))
    for sensor, rows in got.items():
        part = df[df["sensor"] == sensor]
        assert sorted(rows) == list(zip(part["t_ns"].tolist(), part["az"].astype(float),
                                        part["gx"].astype(float), strict=True))


def test_parquet_export_has_every_sample_with_utc_times(collected, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    r = cli("export", str(collected.path), "--format", "parquet", "-o", str(out))
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out)
    assert table.num_rows == collected.samples("imu0") + collected.samples("imu1")
    assert str(table.schema.field("time").type) == "timestamp[ns, tz=UTC]"
    assert table.column("sensor").to_pylist().count("imu1") == collected.samples("imu1")


def test_export_plot_and_show_take_a_session_id_with_store(collected, tmp_path):
    sid = collected.manifest["session_id"]
    r = cli("sessions", "show", sid, "--store", str(collected.store))
    assert r.returncode == 0, r.stderr
    assert sid in r.stdout and "walking, bench" in r.stdout and "1 gap(s)" in r.stdout
    r = cli("export", sid, "--store", str(collected.store), "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 0, r.stderr
    r = cli("export", sid, "-o", str(tmp_path / "y.csv"))
    assert r.returncode == 2 and "add --store" in r.stderr
    r = cli("export", "20990101T000000000Z-0000000000", "--store", str(collected.store),
            "-o", str(tmp_path / "z.csv"))
    assert r.returncode == 2 and "no session" in r.stderr and len(r.stderr.splitlines()) == 1
    pytest.importorskip("matplotlib", reason="plot is an optional extra (dev installs it)")
    r = cli("plot", sid, "--store", str(collected.store), "-o", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_export_to_a_closed_pipe_writes_nothing_to_stderr(collected):
    import subprocess
    import sys

    for fmt in ("csv", "ros2-imu"):
        r = subprocess.run(
            f"'{sys.executable}' -m edge_recorder export '{collected.path}' --format {fmt} "
            "-o - | head -c 100 > /dev/null; echo \"${PIPESTATUS[0]}\"",
            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
        assert r.stderr == "", r.stderr
        assert r.stdout.strip() in ("0", str(128 + signal.SIGPIPE))
