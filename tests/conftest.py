"""Fixtures: a real Mosquitto on a free loopback port, the daemon as a subprocess, an
MQTT test client. No mocks of the broker: every MQTT test talks to Mosquitto."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from edge_recorder.devtools import Broker, Postgres, find_mosquitto, find_postgres_bin, wait_until

REPO = Path(__file__).resolve().parent.parent
_db_counter = itertools.count()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: the tests need a real broker "
                    "(sudo apt-get install mosquitto, or run scripts/test.sh, which installs it)")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One real PostgreSQL cluster for the run (each test gets its own database)."""
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed and could not be (scripts/test.sh installs "
                    "Debian's postgresql package)")
    server = Postgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres(postgres_server: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the shared cluster; yields its URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    name = f"{name}_{os.getpid()}_{next(_db_counter)}"
    base = postgres_server.url.rsplit("/", 1)[0]
    psql = str(postgres_server.bindir / "psql")
    subprocess.run([psql, postgres_server.url, "-q", "-c", f'CREATE DATABASE "{name}"'],
                   check=True, capture_output=True)
    yield f"{base}/{name}"


class Client:
    """An MQTT 5 test client that records everything it receives."""

    def __init__(self, port: int, client_id: str = "", *, username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_message = self._on_message
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(5), "test client could not connect"

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(5)

    def publish(self, topic: str, payload: bytes | str, **kw: Any) -> None:
        self.c.publish(topic, payload, qos=1, **kw).wait_for_publish(5)

    def received(self, topic: str) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if paho.topic_matches_sub(topic, m.topic)]

    def json_on(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in self.received(topic)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def client(broker: Broker) -> Iterator[Client]:
    c = Client(broker.port)
    yield c
    c.close()


def base_config(tmp_path: Path, port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "device_id": "test-pi",
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated", "rate_hz": 200}],
        "session": {"duration_s": None, "journey_id": "auto"},
        "triggers": {"mqtt": True},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "storage": {"dir": str(tmp_path / "device-store"), "max_bytes": 100 << 20},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_recorder", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


class Process:
    """An edge-recorder subprocess (daemon or collector) with its log captured."""

    def __init__(self, args: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", *args],
                                     stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
                                     cwd=REPO, env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    procs: list[Process] = []

    def start(*args: str, name: str = "proc", env: dict[str, str] | None = None) -> Process:
        p = Process(list(args), tmp_path / f"{name}-{len(procs)}.log", env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.alive():
            p.stop(signal.SIGKILL)


def wait_online(client: Client, device: str = "test-pi", timeout_s: float = 20) -> dict[str, Any]:
    topic = f"edge-recorder/{device}/status"
    client.subscribe(topic)
    return wait_until(lambda: next((s for s in reversed(client.json_on(topic))
                                    if s.get("online")), None), timeout_s, "daemon online")
