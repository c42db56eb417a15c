"""check-config refuses what would fail at run time, bounded before the work (issue 12,
item 11): every refusal is exit 2, one clear line per problem naming its YAML path, no
traceback, and `run` refuses the very same files."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_recorder.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    MAX_RING_BYTES,
    RING_BYTES_PER_SAMPLE,
    load_config,
)
from edge_recorder.errors import ConfigError
from tests.conftest import REPO

SENSOR = "sensors:\n  - {name: imu0, driver: mpu6050, bus: emulated}\n"
MEMORY_CAP_BYTES = 1 << 30  # the CLI runs under this address-space limit here


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def cli_capped(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_recorder", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, preexec_fn=_capped)


def alias_bomb(levels: int) -> str:
    """The "billion laughs" in YAML: each level nine aliases of the one before."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ndevice_id: *l{levels - 1}\n" + SENSOR


CASES = {
    "infinite duration": (SENSOR + "session: {duration_s: .inf}\n",
                          ["session.duration_s: must be a finite number, got inf"]),
    "not a number": (SENSOR + "session: {max_duration_s: .nan}\n",
                     ["session.max_duration_s: must be a finite number"]),
    "400-digit duration": (SENSOR + f"session: {{max_duration_s: {'9' * 400}}}\n",
                           ["session.max_duration_s: must be a finite number"]),
    "huge duration": (SENSOR + "session: {max_duration_s: 1.0e+12}\n",
                      ["session.max_duration_s: must be more than 0 and at most 86400 s"]),
    "every_s near 0": (SENSOR + "triggers: {interval: {every_s: 1.0e-9, duration_s: 1}}\n",
                       ["triggers.interval.every_s: must be from 1 to 604800 s"]),
    "trigger durations past max": (
        SENSOR + "session: {max_duration_s: 60}\n"
        "triggers:\n  interval: {every_s: 300, duration_s: 120}\n"
        "  gpio: [{pin: 17, duration_s: 90}]\n",
        ["triggers.interval.duration_s: 120 is longer than session.max_duration_s (60)",
         "triggers.gpio[0].duration_s: 90 is longer than session.max_duration_s (60)"]),
    "emulated hang at infinity": (
        "sensors:\n  - {name: imu0, driver: mpu6050, bus: emulated, "
        "emulation: {hang_after_s: .inf, absent_s: [[1, .inf]]}}\n",
        ["sensors[0].emulation.hang_after_s: must be a finite number",
         "sensors[0].emulation.absent_s: must be a list of [from_s, to_s] pairs"]),
    "2 GB of ring buffer": (
        "sensors:\n  - {name: imu0, driver: icm42688, bus: emulated, rate_hz: 8000}\n"
        "buffer: {seconds: 3600}\n",
        ["buffer.seconds: 3600 s of ring buffer for 1 sensor(s) at 8000 Hz needs ~1758 MiB "
         "of memory, more than the 128 MiB limit"]),
    "duplicate keys": (SENSOR + "session:\n  duration_s: 5\n  labels: [a]\n  duration_s: 6\n"
                       "mqtt: {host: a, host: b}\n",
                       ["mqtt.host: duplicate key (lines 7 and 7)",
                        "session.duration_s: duplicate key (lines 4 and 6)"]),
    "duplicate sensor key": ("sensors:\n  - name: imu0\n    driver: mpu6050\n    bus: 1\n"
                             "    name: imu1\n",
                             ["sensors[0].name: duplicate key (lines 2 and 5)"]),
    "pins gpiozero refuses": (
        SENSOR + "triggers: {gpio: [{pin: NOPE}, {pin: 99}, {pin: BOARD1}]}\n"
        "status_led: {pin: gpio27}\n",
        ["triggers.gpio[0].pin: NOPE is not a valid pin name",
         "triggers.gpio[1].pin: 99 is not a GPIO (GPIO0 to GPIO53)",
         "triggers.gpio[2].pin: BOARD1 is not a GPIO pin",
         "status_led.pin: gpio27 is not a valid pin name"]),
    "alias bomb": (alias_bomb(9), [f"expands to more than {MAX_CONFIG_NODES} YAML nodes"]),
    "recursive alias": ("a: &a [*a]\n" + SENSOR, ["configs cannot be recursive"]),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n" + SENSOR,
                     ["nested too deeply"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_config_refuses_what_would_fail_at_run_time(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    r = cli_capped("check-config", "-c", str(path))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    for line in expected:
        assert line in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr) < 2000  # no exploded value quoted back


def test_run_refuses_the_same_files(tmp_path: Path) -> None:
    for name in ("infinite duration", "alias bomb", "duplicate keys"):
        path = tmp_path / "config.yaml"
        path.write_text(CASES[name][0])
        r = cli_capped("run", "-c", str(path))
        assert r.returncode == 2 and CASES[name][1][0] in r.stderr, (name, r.stderr[-2000:])


def test_a_non_utf8_file_is_exit_2_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes((SENSOR + "device_id: café\n").encode("latin-1"))
    r = cli_capped("check-config", "-c", str(path))
    assert r.returncode == 2, r.stderr
    assert "line 3: not UTF-8 text (byte 0xe9 at offset" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SENSOR + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(path)


def test_the_limits_let_real_configs_through(tmp_path: Path) -> None:
    """The shipped configs, anchors used sensibly, and a ring just under the limit pass."""
    for name in ("demo.yaml", "example.yaml"):
        load_config(REPO / "config" / name)
    seconds = MAX_RING_BYTES // (RING_BYTES_PER_SAMPLE * 1000)
    doc = {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated",
                        "rate_hz": 1000}], "buffer": {"seconds": seconds}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc) + "triggers: {gpio: [{pin: 17, labels: &l [door]}, "
                    "{pin: 18, labels: *l}]}\nsession: {max_duration_s: 86400}\n")
    config = load_config(path)
    assert config.buffer.seconds == seconds
    assert [g.labels for g in config.triggers.gpio] == [("door",), ("door",)]
