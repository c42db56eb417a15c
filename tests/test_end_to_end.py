"""The whole data path with real parts: daemon and collector as processes, a real
Mosquitto, the emulated MPU-6050 at 200 Hz, the CLI for listing and export."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path

import pytest

from tests.conftest import Client, base_config, cli, wait_online, wait_until, write_config

pytestmark = pytest.mark.broker


def test_command_session_is_collected_listed_and_exported(tmp_path, broker, client, spawn):
    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    store = tmp_path / "collected"
    collector = spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port),
                      "--store", str(store), name="collector")
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    client.subscribe("edge-recorder/test-pi/cmd/reply")

    client.publish("edge-recorder/test-pi/cmd", json.dumps(
        {"cmd": "start", "labels": ["login", "bench-test"], "journey_id": "journey-42",
         "request_id": "r1"}))
    start = wait_until(lambda: next((r for r in client.json_on("edge-recorder/test-pi/cmd/reply")
                                     if r.get("request_id") == "r1"), None), 10, "start reply")
    assert start["ok"] is True, start
    session_id = start["session_id"]
    time.sleep(2.0)
    client.publish("edge-recorder/test-pi/cmd", json.dumps(
        {"cmd": "stop", "session_id": session_id, "request_id": "r2"}))
    stop = wait_until(lambda: next((r for r in client.json_on("edge-recorder/test-pi/cmd/reply")
                                    if r.get("request_id") == "r2"), None), 10, "stop reply")
    assert stop == {"request_id": "r2", "ok": True, "stopped": [session_id]}

    stored = store / "sessions" / "test-pi" / f"{session_id}.json"
    wait_until(stored.exists, 20, "the collector to store the session")
    manifest = json.loads(stored.read_text())
    assert manifest["labels"] == ["login", "bench-test"]
    assert manifest["journey_id"] == "journey-42"
    assert manifest["stop_reason"] == "command"
    assert manifest["trigger"]["source"] == "mqtt"
    assert 1.8 < manifest["duration_s"] < 3.0

    def listed(*args: str) -> list[dict]:
        r = cli("sessions", "list", "--store", str(store), "--json", *args)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    by_journey = listed("--journey", "journey-42")
    assert [m["session_id"] for m in by_journey] == [session_id]
    assert Path(by_journey[0]["path"]).is_file()
    assert [m["session_id"] for m in listed("--label", "login", "--label", "bench-test")] \
        == [session_id]
    assert listed("--label", "logout") == []
    assert listed("--label", "login", "--label", "logout") == []
    assert listed("--device", "other-pi") == []

    out = tmp_path / "session.csv"
    r = cli("export", by_journey[0]["path"], "--format", "csv", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["sensor", "t_ns", "ax", "ay", "az", "gx", "gy", "gz",
                                     "temp_c"]
        rows = list(reader)
    assert len(rows) == manifest["sensors"][0]["samples"]
    assert manifest["sensors"][0]["dropped"] == 0
    t = [int(row["t_ns"]) for row in rows]
    assert all(b > a for a, b in zip(t, t[1:])), "timestamps must increase strictly"
    spacing = statistics.median(b - a for a, b in zip(t, t[1:]))
    assert abs(spacing - 5_000_000) <= 250_000, spacing
    mean_g = statistics.fmean(math.sqrt(float(r["ax"]) ** 2 + float(r["ay"]) ** 2
                                        + float(r["az"]) ** 2) for r in rows)
    assert abs(mean_g - 9.80665) < 0.05, mean_g
    # the samples lie inside the session's window
    started_ns = _iso_ns(manifest["started_at"])
    stopped_ns = _iso_ns(manifest["stopped_at"])
    assert started_ns <= t[0] and t[-1] < stopped_ns
    assert len(rows) == pytest.approx(200 * manifest["duration_s"], abs=3)

    # the device keeps it too, and knows it is published
    device = cli("sessions", "list", "--store", str(tmp_path / "device-store"), "--json")
    assert device.returncode == 0
    listed_device = [json.loads(x) for x in device.stdout.splitlines()]
    assert [(m["session_id"], m["published"]) for m in listed_device] == [(session_id, True)]

    assert daemon.stop() == 0
    assert collector.stop() == 0
    assert "Traceback" not in daemon.log()


def test_bad_commands_get_error_replies_and_the_daemon_keeps_running(tmp_path, broker, client,
                                                                    spawn):
    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    reply_topic = "edge-recorder/test-pi/cmd/reply"
    client.subscribe(reply_topic)
    bad = [b"this is not json", b"\xff\xfe", b"[1, 2]", b'{"cmd": "explode"}',
           b'{"cmd": "start", "colour": "red", "request_id": "x1"}',
           b'{"cmd": "start", "duration_s": "ten"}', b"{" * 20000]
    for payload in bad:
        client.publish("edge-recorder/test-pi/cmd", payload)
    replies = wait_until(lambda: (r := client.json_on(reply_topic)) and len(r) >= len(bad) and r,
                         10, "one reply per bad command")
    assert len(replies) == len(bad)
    codes = [r["error"]["code"] for r in replies]
    assert codes == ["invalid_json", "invalid_json", "invalid_command", "invalid_command",
                     "unknown_field", "invalid_field", "payload_too_large"]
    assert all(r["ok"] is False and r["error"]["message"] for r in replies)
    assert replies[4]["request_id"] == "x1"
    # still alive and answering
    client.publish("edge-recorder/test-pi/cmd", json.dumps({"cmd": "status", "request_id": "s"}))
    status = wait_until(lambda: next((r for r in client.json_on(reply_topic)
                                      if r.get("request_id") == "s"), None), 10, "status reply")
    assert status["ok"] and status["status"]["sensors"]["imu0"]["state"] == "up"
    assert daemon.alive()
    assert daemon.stop() == 0


def test_mqtt5_response_topic_and_correlation_data_are_honoured(tmp_path, broker, client, spawn):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    mine = "edge-recorder/test-pi/cmd/reply/my-tool"  # within the device's reply namespace
    client.subscribe(mine)
    client.subscribe("edge-recorder/test-pi/cmd/reply")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = mine
    props.CorrelationData = b"corr-7"
    client.publish("edge-recorder/test-pi/cmd", b'{"cmd": "status"}', properties=props)
    msg = wait_until(lambda: next(iter(client.received(mine)), None), 10, "reply")
    assert json.loads(msg.payload)["ok"] is True
    assert msg.properties.CorrelationData == b"corr-7"
    assert client.received("edge-recorder/test-pi/cmd/reply") == []


def _iso_ns(text: str) -> int:
    from calendar import timegm

    whole, frac = text.rstrip("Z").split(".")
    return (timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) * 10**9 + int(frac) * 1000)


def test_client_fixture_is_real(client: Client) -> None:
    """The broker fixture is a real Mosquitto: a retained message comes back."""
    client.publish("t/retained", b"x", retain=True)
    other = Client(client.c._port)
    other.subscribe("t/retained")
    wait_until(lambda: other.received("t/retained"), 5, "retained message")
    other.close()


def test_session_files_decode_with_a_generic_mcap_ros2_decoder(tmp_path):
    """No code of ours needed to read a session: mcap + mcap-ros2-support decode it."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from tests.rig import Rig, stored

    rig = Rig(tmp_path)
    from edge_recorder.recording.events import StartRequested, StopRequested, Trigger

    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1.0)
    rig.ask(StopRequested, trigger=Trigger("mqtt"))
    rig.finish()
    manifest, path = stored(rig, sid)
    seen = 0
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, decoded in reader.iter_decoded_messages():
            assert schema.name == "edge_recorder/msg/ImuSamples"
            assert channel.topic == "/imu/imu0"
            assert len(decoded.t_ns) == len(decoded.az) == len(decoded.temp_c)
            assert all(abs(z - 9.80665) < 0.2 for z in decoded.az)
            seen += len(decoded.t_ns)
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
    assert seen == manifest["sensors"][0]["samples"]
    assert json.loads(metadata["session"]["manifest"])["session_id"] == sid
