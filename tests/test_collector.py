"""The collector against hostile input and bad days (issue 12, collector items 1-6), and its
receipts (issue 17). Unit tests drive the store and the message handler directly; the
MQTT ones run against a real Mosquitto."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_recorder.collector.collector import Collector
from edge_recorder.config import MqttConfig
from edge_recorder.devtools import wait_until

PREFIX = "edge-recorder"


def session(sid: str = "20261126T100000123Z-3f9a1c07b2", device: str = "trel",
            size: int = 5000, part: int = 1024, **changes: Any) -> tuple[dict, list[bytes]]:
    """A manifest and its parts for ``size`` bytes of data unique to (device, sid)."""
    seed = hashlib.sha256(f"{device}/{sid}".encode()).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    parts = [data[i:i + part] for i in range(0, size, part)] or [b""]
    manifest = {"session_id": sid, "device_id": device, "labels": ["login"],
                "journey_id": "j-1", "started_at": "2026-11-26T10:00:00.000000Z",
                "stopped_at": "2026-11-26T10:00:05.000000Z", "duration_s": 5.0,
                "stop_reason": "command", "bytes": size, "parts": len(parts),
                "sha256": hashlib.sha256(data).hexdigest(), **changes}
    return manifest, parts


def deliver(handle: Any, manifest: dict, parts: list[bytes], device: str | None = None,
            sid: str | None = None) -> Any:
    """Feed a session to ``handle(topic, payload)`` as the publisher would send it."""
    device = device or manifest["device_id"]
    sid = sid or manifest["session_id"]
    for n, p in enumerate(parts):
        handle(f"{PREFIX}/{device}/sessions/{sid}/part/{n}", p)
    return handle(f"{PREFIX}/{device}/sessions/{sid}/manifest", json.dumps(manifest).encode())


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Collector]:
    """A collector whose handler is driven directly (its MQTT link is never started)."""
    c = Collector(MqttConfig(host="127.0.0.1", port=1), tmp_path / "store")
    yield c
    c.store.index.close()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- receipts (issue 17) ------------------------------------------------------------------
@pytest.mark.broker
def test_a_stored_session_gets_a_receipt_and_so_does_each_duplicate(tmp_path, broker, client):
    stop = threading.Event()
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port), tmp_path / "store")
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected")
        client.subscribe(f"{PREFIX}/+/sessions/+/stored")
        manifest, parts = session()
        sid = manifest["session_id"]
        deliver(client.publish, manifest, parts)
        stored = tmp_path / "store" / "sessions" / "trel" / f"{sid}.json"
        (receipt,) = wait_until(lambda: client.json_on(f"{PREFIX}/trel/sessions/{sid}/stored"),
                                10, "the receipt")
        assert stored.exists()  # the receipt comes after the store
        assert receipt == {"session_id": sid, "device_id": "trel", "sha256": manifest["sha256"],
                           "bytes": manifest["bytes"], "duplicate": False}
        (msg,) = client.received(f"{PREFIX}/trel/sessions/{sid}/stored")
        assert msg.qos == 1 and not msg.retain
        deliver(client.publish, manifest, parts)  # the device publishes it again
        receipts = wait_until(lambda: len(r := client.json_on(
            f"{PREFIX}/trel/sessions/{sid}/stored")) == 2 and r, 10, "the duplicate's receipt")
        assert receipts[1] == {**receipt, "duplicate": True}
        assert collector.store.stored == 1
        # its own receipts (and anything else under a device) are not session input
        client.publish(f"{PREFIX}/trel/sessions/{sid}/stored", b"{}")
        client.publish(f"{PREFIX}/trel/sessions/{sid}/part/x/y", b"{}")
        time.sleep(0.5)
        assert collector.store.refused == 0
    finally:
        stop.set()
        worker.join(10)
