"""One daemon per storage.dir. A second `edge-recorder run` on the same directory (the demo
started twice, or a manual run beside the systemd service) used to take the first one's open
session for a crashed one: it "recovered" it from under the recorder (a 5 s session stored as
2.8 s, stop_reason recovered), the first then failed to finalise it, and the two fought over
the MQTT client id. Now the second is refused before it touches the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from edge_recorder.devtools import free_port
from edge_recorder.fsutil import DirectoryInUse, owned_directory
from tests.conftest import REPO, base_config, wait_until, write_config


def test_a_second_owner_is_refused_with_the_first_one_s_pid_and_a_closed_one_frees_it(tmp_path):
    store = tmp_path / "store"
    with owned_directory(store, "storage.dir"):
        with pytest.raises(DirectoryInUse, match=rf"storage.dir {store} is in use by another "
                                                 rf"edge-recorder \(pid {os.getpid()}\)"):
            with owned_directory(store, "storage.dir"):
                pass
    with owned_directory(store, "storage.dir"):  # released on exit
        pass


def test_a_second_daemon_on_the_same_storage_dir_exits_1_and_leaves_the_first_s_session(
        tmp_path, spawn):
    config = write_config(tmp_path / "c.yaml", base_config(
        tmp_path, free_port(),  # no broker: the daemon records and keeps its sessions
        session={"duration_s": None, "journey_id": "auto"},
        triggers={"mqtt": False, "interval": {"every_s": 1, "duration_s": 30}}))
    store = tmp_path / "device-store"
    first = spawn("run", "-c", str(config), name="first")
    wait_until(lambda: list((store / "recording").glob("*.json")), 30, "a session to open")
    [open_session] = (store / "recording").glob("*.json")

    second = subprocess.run([sys.executable, "-m", "edge_recorder", "run", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip() == (
        f"edge-recorder: storage.dir {store} is in use by another edge-recorder (pid "
        f"{first.proc.pid}); stop it first (systemctl stop edge-recorder)")
    assert open_session.exists() and first.alive()
    assert "recovered" not in first.log() and "could not finalise" not in first.log()

    assert first.stop(signal.SIGTERM) == 0
    third = spawn("run", "-c", str(config), name="third")  # the lock went with the process
    wait_until(lambda: "running as" in third.log(), 30, "the third daemon to run")
    assert third.stop(signal.SIGTERM) == 0


def test_selftest_refuses_to_reset_the_sensors_of_a_running_daemon(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path, free_port()))
    store = tmp_path / "device-store"
    selftest = [sys.executable, "-m", "edge_recorder", "selftest", "-c", str(config),
                "--seconds", "0.5"]
    with owned_directory(store, "storage.dir"):  # as `run` holds it
        r = subprocess.run(selftest, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.strip() == (
        f"edge-recorder: the daemon runs on this config (pid {os.getpid()}, storage.dir "
        f"{store}); stop it first (systemctl stop edge-recorder): the selftest resets the "
        "sensors")
    r = subprocess.run(selftest, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "the daemon runs" not in r.stderr and "imu0: MPU-6050" in r.stdout, r.stderr
