"""Fuzz the collector's message handler (issue 12): path-like ids, wrong types, absurd
counts, wrong devices, garbage topics and payloads — 2,000 examples per run, driven through
the handler directly. Afterwards the store is intact, what was stored before still lists and
verifies, and a normal session published through a real Mosquitto is stored once within
10 s."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.collector.collector import Collector
from edge_recorder.config import MqttConfig
from edge_recorder.delivery.mqtt import Message
from edge_recorder.devtools import wait_until
from edge_recorder.documents import ID_RE, MAX_PARTS
from tests.conftest import cli
from tests.test_collector import PREFIX, deliver, session

FUZZ_EXAMPLES = 2000

PATH_LIKE = ["..", ".", "", "../..", "a.b", "-x", "_x", "x" * 129, "%2e%2e", "a\x00b", "~",
             "$SYS", "+", "#", " ", "sessions", "incoming", "rejected", "index.sqlite", "é"]
ids = st.one_of(st.sampled_from(PATH_LIKE), st.sampled_from(["trel", "other", "evil"]),
                st.from_regex(ID_RE, fullmatch=True).filter(lambda s: len(s) < 40),
                st.text(max_size=12))
part_numbers = st.one_of(st.integers(-3, 2 * MAX_PARTS).map(str), st.integers(0, 8).map(str),
                         st.sampled_from(["", "01", "1e3", "٣", "0x1", "9" * 400, "-0"]),
                         st.text(max_size=6))
json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
MANIFEST_KEYS = ["session_id", "device_id", "labels", "journey_id", "started_at", "stopped_at",
                 "duration_s", "stop_reason", "bytes", "parts", "sha256", "sensors", "trigger",
                 "pre_trigger_s", "format", "clock", "unknown"]
absurd = st.sampled_from([0, -1, 2_000_000, 2**63, 10**400 // 10**399 * 10**30, 1.5, True,
                          "1", None, [], {}])


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    device, sid = draw(ids), draw(ids)
    kind = draw(st.sampled_from(["part", "manifest", "manifest", "garbage"]))
    if kind == "garbage":
        levels = draw(st.lists(st.text(max_size=10), max_size=7))
        return "/".join([PREFIX, *levels]), draw(st.binary(max_size=64))
    if kind == "part":
        return (f"{PREFIX}/{device}/sessions/{sid}/part/{draw(part_numbers)}",
                draw(st.binary(max_size=2048)))
    manifest, _ = session(sid=sid if ID_RE.match(sid) else "s1", device=device
                          if ID_RE.match(device) else "d1", size=draw(st.integers(0, 4096)))
    manifest["session_id"], manifest["device_id"] = sid, draw(st.sampled_from([device, "trel"]))
    for key in draw(st.lists(st.sampled_from(MANIFEST_KEYS), max_size=3)):
        manifest[key] = draw(st.one_of(json_values, absurd))
    if draw(st.booleans()) and draw(st.booleans()):
        payload = draw(st.binary(max_size=300))  # not even JSON
    else:
        payload = json.dumps(manifest).encode()
    return f"{PREFIX}/{device}/sessions/{sid}/manifest", payload


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in (root / "sessions").rglob("*") if p.is_file()}


@pytest.mark.broker
@pytest.mark.slow
def test_fuzzed_topics_and_manifests_leave_the_store_intact(tmp_path, broker, client):
    root = tmp_path / "store"
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port), root)
    handle = lambda t, p: collector.on_message(Message(t, p))  # noqa: E731
    before = [session(device="trel"), session(sid="20261126T120000000Z-b", device="other")]
    for manifest, parts in before:
        deliver(handle, manifest, parts)
    stored_before = snapshot(root)
    assert len(stored_before) == 4
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    seen = {"examples": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(messages(), min_size=1, max_size=3))
    def fuzz(batch: list[tuple[str, bytes]]) -> None:
        seen["examples"] += 1
        for topic, payload in batch:
            collector.on_message(Message(topic, payload))  # never raises: refused or stored

    fuzz()
    assert seen["examples"] >= FUZZ_EXAMPLES
    assert collector.store.refused > FUZZ_EXAMPLES // 2  # the fuzz reached the refusals

    # the store is intact: nothing outside it, what was stored before is there unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert {"sessions", "incoming", "rejected", "index.sqlite"} <= {p.name for p in root.iterdir()}
    after = snapshot(root)
    assert {k: after.get(k) for k in stored_before} == stored_before
    r = cli("sessions", "list", "--store", str(root), "--json")
    assert r.returncode == 0, r.stderr
    listed = [json.loads(line) for line in r.stdout.splitlines()]
    for manifest, _ in before:
        assert (manifest["device_id"], manifest["session_id"]) in \
            {(m["device_id"], m["session_id"]) for m in listed}
    for m in listed:  # everything listed (the fuzz may store a valid one) verifies
        assert hashlib.sha256(Path(m["path"]).read_bytes()).hexdigest() == m["sha256"]
        assert Path(m["path"]).resolve().is_relative_to(root.resolve())

    # and a normal session published through the broker afterwards is stored once, in 10 s
    stop = threading.Event()
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected")
        stored = collector.store.stored
        manifest, parts = session(sid="20261127T000000000Z-after", device="trel", size=300_000,
                                  part=65536)
        client.subscribe(f"{PREFIX}/trel/sessions/+/stored")
        deliver(client.publish, manifest, parts)
        (receipt,) = wait_until(lambda: client.json_on(
            f"{PREFIX}/trel/sessions/{manifest['session_id']}/stored"), 10,
            "the session after the fuzz")
        assert receipt["duplicate"] is False and receipt["sha256"] == manifest["sha256"]
        assert collector.store.stored == stored + 1
        mcap = root / "sessions" / "trel" / f"{manifest['session_id']}.mcap"
        assert hashlib.sha256(mcap.read_bytes()).hexdigest() == manifest["sha256"]
    finally:
        stop.set()
        worker.join(10)
