"""The broker ACL the README documents (config/mosquitto.acl), against a real Mosquitto with
that ACL file and a password file: each device publishes only under its own prefix and
reads only its own commands and receipts; the collector reads every device's sessions and
sends receipts. Together with the collector's (device from the topic, id) identity, no
device can deliver, read or acknowledge another device's sessions (issue 12)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_recorder.collector.collector import Collector
from edge_recorder.config import MqttConfig
from edge_recorder.devtools import Broker, wait_until, write_password_file
from tests.conftest import REPO, Client
from tests.test_collector import PREFIX, deliver, session

USERS = {"trel": "trel-pw", "evil": "evil-pw", "collector": "collector-pw",
         "operator": "operator-pw"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is missing (it comes with Debian's mosquitto package)")
    work = tmp_path / "aclbroker"
    work.mkdir()
    broker = Broker(work, password_file=write_password_file(work / "passwd", USERS),
                    acl_file=REPO / "config" / "mosquitto.acl")
    broker.start()
    yield broker
    broker.stop()


def login(broker: Broker, user: str) -> Client:
    return Client(broker.port, f"test-{user}", username=user, password=USERS[user])


@pytest.mark.broker
def test_the_documented_acl_keeps_each_device_to_its_own_sessions(tmp_path, acl_broker):
    (tmp_path / "collector-pw").write_text(USERS["collector"])
    settings = MqttConfig(host="127.0.0.1", port=acl_broker.port, username="collector",
                          password_file=tmp_path / "collector-pw")
    collector = Collector(settings, tmp_path / "store")
    stop = threading.Event()
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    trel, evil = login(acl_broker, "trel"), login(acl_broker, "evil")
    operator = login(acl_broker, "operator")
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected with its password")
        trel.subscribe(f"{PREFIX}/trel/#")
        evil.subscribe(f"{PREFIX}/trel/#")  # tries to watch trel's sessions and receipts
        evil.subscribe(f"{PREFIX}/+/sessions/#")
        evil.subscribe(f"{PREFIX}/evil/cmd")

        real, real_parts = session(device="trel", size=4000)
        sid = real["session_id"]
        fake, fake_parts = session(device="trel", size=17, part=17)
        # evil publishes a fake of trel's session under trel's prefix: the broker drops it;
        # under its own prefix: the collector refuses it (the manifest names trel)
        deliver(evil.publish, fake, fake_parts, device="trel")
        deliver(evil.publish, fake, fake_parts, device="evil")
        # and a forged receipt and a command for trel
        evil.publish(f"{PREFIX}/trel/sessions/{sid}/stored",
                     json.dumps({**fake, "duplicate": False}))
        evil.publish(f"{PREFIX}/trel/cmd", json.dumps({"cmd": "status", "request_id": "evil"}))
        for device in ("trel", "evil"):  # the operator may command both
            operator.publish(f"{PREFIX}/{device}/cmd",
                             json.dumps({"cmd": "status", "request_id": "op"}))
        wait_until(lambda: collector.store.refused >= 1, 10, "the collector refusing the fake")
        deliver(trel.publish, real, real_parts)
        receipt_topic = f"{PREFIX}/trel/sessions/{sid}/stored"
        (receipt,) = wait_until(lambda: trel.json_on(receipt_topic), 10, "trel's receipt")
        assert receipt["sha256"] == real["sha256"] and receipt["duplicate"] is False
        mcap = tmp_path / "store" / "sessions" / "trel" / f"{sid}.mcap"
        assert mcap.read_bytes() == b"".join(real_parts)
        assert not (tmp_path / "store" / "sessions" / "evil").exists()
        assert collector.store.stored == 1
        time.sleep(0.5)  # anything still in flight would have arrived by now

        # trel got the operator's command and the collector's receipt, nothing from evil
        assert trel.json_on(f"{PREFIX}/trel/cmd") == [{"cmd": "status", "request_id": "op"}]
        assert trel.json_on(receipt_topic) == [receipt]
        # evil got its own command, and none of trel's parts, manifest or receipt
        assert [(m.topic, json.loads(m.payload)) for m in evil.messages] == \
            [(f"{PREFIX}/evil/cmd", {"cmd": "status", "request_id": "op"})]
    finally:
        stop.set()
        worker.join(10)
        for c in (trel, evil, operator):
            c.close()


@pytest.mark.broker
def test_anonymous_clients_are_not_let_in(acl_broker):
    refused: list[str] = []
    done = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="anon", protocol=paho.MQTTv5)

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        refused.append(str(reason))
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", acl_broker.port)
    c.loop_start()
    try:
        assert done.wait(5)
        assert refused == ["Not authorized"]
    finally:
        c.loop_stop()


@pytest.mark.broker
def test_the_collector_with_a_wrong_password_is_refused_and_says_why(tmp_path, acl_broker,
                                                                      caplog):
    (tmp_path / "pw").write_text("wrong")
    collector = Collector(MqttConfig(host="127.0.0.1", port=acl_broker.port,
                                     username="collector", password_file=tmp_path / "pw"),
                          tmp_path / "store")
    collector.link.start()
    try:
        wait_until(lambda: "refused the connection" in caplog.text, 10, "the refusal logged")
        assert not collector.link.connected.is_set()
    finally:
        collector.link.close()
