"""Config loading: every error at once, each with its YAML path; exit 2; no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_recorder.config import Config, load_config, parse_config
from edge_recorder.errors import ConfigError
from tests.conftest import REPO, cli

GOOD = {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": 1}]}


def problems(doc: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


def test_minimal_config_gets_the_documented_defaults() -> None:
    c = parse_config(GOOD)
    assert isinstance(c, Config)
    s = c.sensors[0]
    assert (s.address, s.rate_hz, s.accel_range_g, s.gyro_range_dps) == (0x68, 200, 4, 500)
    assert c.session.duration_s == 10 and c.session.max_duration_s == 600
    assert c.session.journey_id == "auto" and c.session.max_concurrent == 4
    assert c.mqtt.port == 1883 and c.mqtt.max_payload_bytes == 131072 and c.mqtt.protocol == "5"
    assert c.topic_root == f"edge-recorder/{c.device_id}"
    with pytest.raises(AttributeError):
        c.device_id = "x"  # type: ignore[misc]  # frozen


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    found = problems({
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": 1, "rate_hz": 1234,
                     "accel_range_g": "four"}],
        "sesion": {},
        "mqtt": {"port": "1883"},
    })
    text = "\n".join(found)
    assert "sensors[0].rate_hz: 1234 is not a rate this mpu6050 supports (choose from 1000, " \
        in text
    assert "sensors[0].accel_range_g: must be a whole number, got 'four'" in text
    assert "sesion: unknown key; did you mean 'session'?" in text
    assert "mqtt.port: must be a whole number, got '1883'" in text
    assert len(found) == 4


@pytest.mark.parametrize("doc, expected", [
    ({}, "sensors: is required"),
    ({"sensors": [{"name": "imu0", "bus": 1}]}, "sensors[0].driver: is required"),
    ({"sensors": [{"name": "imu0", "driver": "bmi160", "bus": 1}]},
     "sensors[0].driver: 'bmi160' is not a supported driver (choose from icm42688, lsm6dsox, "
     "mpu6050)"),
    ({**GOOD, "session": {"labels": "login"}}, "session.labels: must be a list of strings"),
    ({**GOOD, "session": {"pre_trigger_s": 40}, "buffer": {"seconds": 30}},
     "session.pre_trigger_s: 40 s reaches further back than the ring buffer holds"),
    ({"sensors": [GOOD["sensors"][0], GOOD["sensors"][0]]},
     "sensors[1].name: 'imu0' is already used by sensors[0]"),
    ({**GOOD, "triggers": {"gpio": [{"pin": 17, "action": "press"}]}},
     "triggers.gpio[0].action: 'press' is not one of 'start', 'stop', 'toggle'"),
    ({**GOOD, "mqtt": {"protocol": 4}}, "mqtt.protocol: 4 is not a supported MQTT version"),
    ({**GOOD, "device_id": "bench pi"}, "device_id: 'bench pi' must be 1-64 characters"),
    ({"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": 1, "address": 0x6A}]},
     "sensors[0].address: 0x6a is not an address a mpu6050 can have"),
    ({**GOOD, "session": {"allowed_labels": ["a"], "labels": ["b"]}},
     "session.labels: b not in session.allowed_labels (a)"),
])
def test_specific_errors_name_the_path_and_the_fix(doc: dict, expected: str) -> None:
    assert any(expected in p for p in problems(doc)), problems(doc)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, path_in_message", [
    ("sensors:\n  - {name: imu0, driver: mpu6050, bus: 1, rate_hz: fast}\n", "sensors[0].rate_hz"),
    ("sensors:\n  - {name: imu0, driver: mpu6050, bus: 1}\nmqtt: {hots: x}\n", "mqtt.hots"),
    ("mqtt: {host: localhost}\n", "sensors: is required"),
])
def test_check_config_exits_2_with_the_path_and_no_traceback(tmp_path: Path, text: str,
                                                            path_in_message: str) -> None:
    r = cli("check-config", "-c", str(write(tmp_path, text)))
    assert r.returncode == 2
    assert path_in_message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_check_config_accepts_the_shipped_configs() -> None:
    for name in ("demo.yaml", "example.yaml"):
        r = cli("check-config", "-c", str(REPO / "config" / name))
        assert r.returncode == 0, r.stderr


def test_yaml_syntax_errors_and_missing_files_are_one_clear_line(tmp_path: Path) -> None:
    r = cli("check-config", "-c", str(write(tmp_path, "sensors: [\n")))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "line" in r.stderr
    r = cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read the config file" in r.stderr
    assert "Traceback" not in r.stderr


def test_relative_storage_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "c.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**GOOD, "storage": {"dir": "../data"}}))
    assert load_config(path).storage.dir.resolve() == (tmp_path / "data").resolve()


@pytest.mark.parametrize("mqtt, expected", [
    ({"username": "pi", "password_file": "missing-pw"}, "mqtt.password_file: cannot read"),
    ({"tls": {"ca_file": "missing-ca.crt"}}, "mqtt.tls.ca_file:"),
])
def test_missing_credential_files_name_the_key_exit_2(tmp_path: Path, mqtt: dict,
                                                     expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        **GOOD, "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}],
        "mqtt": mqtt, "storage": {"dir": str(tmp_path / "store")}}))
    r = cli("run", "-c", str(path), timeout=30)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr


def test_the_bus_budget_uses_the_real_bus_clock(tmp_path: Path, monkeypatch) -> None:
    # NXP UM10204 (I2C-bus specification) §3.1.5-3.1.6: 8 data bits then the acknowledge
    # bit, "the acknowledge 9th clock pulse": 9 clock cycles a byte, so 100 kHz ≈ 11.1 kB/s
    # and one MPU-6050 at 1 kHz (14 B frames) needs 14 kB/s. The Pi's clock: Linux
    # drivers/i2c/busses/i2c-bcm2835.c bcm2835_i2c_probe reads the adapter node's
    # "clock-frequency" (of_property_read_u32; a devicetree u32 is big-endian, Devicetree
    # Specification §2.2.4) and sets adap->dev.of_node, i.e. i2c-N/of_node/clock-frequency.
    from edge_recorder.sensors import smbus

    node = tmp_path / "i2c-1" / "of_node"
    node.mkdir(parents=True)
    (node / "clock-frequency").write_bytes((100_000).to_bytes(4, "big"))
    monkeypatch.setattr(smbus, "SYSFS_I2C_ADAPTERS", tmp_path)
    one_khz = {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": 1, "rate_hz": 1000}]}
    assert any("runs at 100 kHz" in p and "dtparam=i2c_arm_baudrate" in p
               for p in problems(one_khz)), problems(one_khz)
    (node / "clock-frequency").write_bytes((400_000).to_bytes(4, "big"))
    parse_config(one_khz)
    emulated = {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated",
                             "rate_hz": 1000, "emulation": {"bus_hz": 100_000}}]}
    assert any("runs at 100 kHz" in p for p in problems(emulated)), problems(emulated)
