"""Fleet scale on existing engines (issue 14): collectors in an MQTT 5 shared-subscription
group on one store and one PostgreSQL index, fed by simulated devices that publish through
the real publisher. Real Mosquitto, real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from edge_recorder.delivery.mqtt import topic_filter
from edge_recorder.devtools import Broker, wait_until
from edge_recorder.fleet import Fleet
from tests.conftest import cli

pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")


def test_shared_subscription_filters_match_their_topics() -> None:
    assert topic_filter("$share/g/edge-recorder/+/sessions/+/part/+") == \
        "edge-recorder/+/sessions/+/part/+"
    assert topic_filter("edge-recorder/+/cmd") == "edge-recorder/+/cmd"


def incoming_files(store: Path) -> list[Path]:
    return [p for p in (store / "incoming").rglob("*") if p.is_file()]


def listed(store: Path, index: str | None = None) -> list[dict]:
    args = ["sessions", "list", "--store", str(store), "--json"]
    if index:
        args += ["--index", index]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def check_store(store: Path, fleet: Fleet, rows: list[dict]) -> None:
    """Every recorded session listed exactly once, each file matching its sha256."""
    keys = [(r["device_id"], r["session_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "a session is listed twice"
    recorded = {(r.device_id, r.session_id): r for r in fleet.recorded}
    assert set(keys) == set(recorded)
    for row in rows:
        data = Path(row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] == \
            recorded[(row["device_id"], row["session_id"])].sha256


@pytest.mark.slow
def test_three_collectors_share_one_store_and_index_and_survive_a_sigkill(
        tmp_path: Path, broker: Broker, postgres: str, spawn) -> None:
    """Issue 14, done when: 3 collectors in one --share group on one store and one
    PostgreSQL index, 5 devices publishing a session every second for 20 s, one collector
    SIGKILLed halfway: every session listed once, every file matching its sha256, and
    incoming/ empty 30 s after the last publish."""
    store = tmp_path / "store"
    members = [spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port),
                     "--store", str(store), "--share", "fleet", "--index", postgres,
                     "--client-id", f"collector-{k}", name=f"collector{k}") for k in range(3)]
    wait_until(lambda: all("connected" in m.log() for m in members), 30, "collectors up")
    # devices republish after 3 s without a receipt: what a killed member held comes back
    fleet = Fleet(tmp_path / "devices", broker.port, devices=5, part_bytes=4096,
                  receipt_timeout_s=3.0)
    try:
        killer = threading.Timer(10.0, lambda: members[1].stop(signal.SIGKILL))
        killer.start()
        fleet.run(every_s=1.0, for_s=20.0, session_s=0.4)
        killer.join()
        last_publish = time.monotonic()
        assert not members[1].alive()
        fleet.wait_stored(timeout_s=120)
        print(f"all receipts {time.monotonic() - last_publish:.1f} s after the last publish")
        assert len(fleet.recorded) >= 5 * 19
        rows = listed(store, postgres)
        check_store(store, fleet, rows)
        wait_until(lambda: not incoming_files(store),
                   max(1.0, 30 - (time.monotonic() - last_publish)), "incoming/ empty")
    finally:
        fleet.close()
    for m in (members[0], members[2]):
        assert m.stop() == 0
    logs = "".join(m.log() for m in members)
    assert "Traceback" not in logs
    # the PostgreSQL index and the store's own manifests agree
    assert {(r["device_id"], r["session_id"]) for r in listed(store)} == \
        {(r["device_id"], r["session_id"]) for r in rows}


def test_one_collector_with_sqlite_stores_a_fleet_once(tmp_path: Path, broker: Broker,
                                                       spawn) -> None:
    """The embedded default: one collector, the store's SQLite index, receipts for all."""
    store = tmp_path / "store"
    member = spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store",
                   str(store), name="collector")
    wait_until(lambda: "connected" in member.log(), 30, "collector up")
    fleet = Fleet(tmp_path / "devices", broker.port, devices=3, part_bytes=4096)
    try:
        fleet.run(every_s=0.5, for_s=3.0, session_s=0.3)
        fleet.wait_stored(timeout_s=60)
        check_store(store, fleet, listed(store))
    finally:
        fleet.close()
    assert member.stop() == 0
    assert not incoming_files(store)
