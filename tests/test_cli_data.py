"""Reading session files safely and the data commands' manners: every byte flip is an
error, older files still read, user mistakes exit 2 with one line, help on every option,
progress only on a terminal, tidy listings, collector wording."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import signal
from pathlib import Path

import pytest
from mcap.writer import CompressionType, Writer

from edge_recorder.cli import build_parser
from edge_recorder.errors import SessionFileError
from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.sampling.ring import Block
from edge_recorder.sessionfile import SCHEMA, SCHEMA_NAME, SessionFile, encode_block, iter_batches
from edge_recorder.termio import progress_bar
from tests.conftest import cli, wait_until
from tests.rig import Rig, stored


def recorded(tmp_path: Path, seconds: float = 0.5, rate_hz: float = 100) -> tuple[dict, Path]:
    rig = Rig(tmp_path, driver_name="icm42688", rate_hz=rate_hz)
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"), labels=("flip",))["session_id"]
    rig.run(seconds)
    rig.ask(StopRequested, trigger=Trigger("mqtt"))
    rig.finish()
    return stored(rig, sid)


def test_every_single_byte_flip_in_a_session_file_is_an_error(tmp_path):
    """CRC-32 catches every burst of up to 32 bits; the reader must check every CRC the
    file has (data section, summary) and the records that frame them, so no flip anywhere
    can come out as different samples."""
    _manifest, path = recorded(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.mcap"
    missed = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        bad.write_bytes(flipped)
        try:
            session = SessionFile(bad)
            list(session.messages())
            session.manifest  # noqa: B018
        except SessionFileError:
            continue
        missed.append(i)
    assert missed == [], f"{len(missed)} of {len(data)} flips read without an error"


def test_a_damaged_file_fails_the_export_with_one_line_and_leaves_no_output(tmp_path):
    _manifest, path = recorded(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(data)
    out = tmp_path / "out.csv"
    r = cli("export", str(bad), "-o", str(out))
    assert r.returncode == 1 and "damaged session file" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not out.exists() and list(tmp_path.glob(".out.csv*")) == []


def write_legacy(path: Path, samples: int = 50) -> dict:
    """A file as this project wrote them before the ros2 profile: profile edge-recorder,
    topic imu/<name>, no data-section CRC."""
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD)
        w.start(profile="edge-recorder", library="edge-recorder 0.1.0")
        schema = w.register_schema(SCHEMA_NAME, "ros2msg", SCHEMA.encode())
        channel = w.register_channel("imu/imu0", "cdr", schema,
                                     {"driver": "mpu6050", "rate_hz": "100"})
        from array import array

        t = array("q", [1_800_000_000_000_000_000 + i * 10_000_000 for i in range(samples)])
        cols = tuple(array("f", [float(i)] * samples) for i in range(6))
        w.add_message(channel, t[0], encode_block(Block(0, t, cols)), t[0], 1)
        manifest = {"session_id": "old-1", "device_id": "d", "labels": [],
                    "sensors": [{"name": "imu0", "samples": samples}]}
        w.add_metadata("session", {"session_id": "old-1", "manifest": json.dumps(manifest)})
        w.finish()
    return manifest


def test_files_from_before_the_ros2_profile_still_read_and_their_sha256_guards_them(tmp_path):
    path = tmp_path / "old-1.mcap"
    manifest = write_legacy(path)
    assert [name for name, _b in iter_batches(path)] == ["imu0"]
    assert sum(len(b["t_ns"]) for _n, b in iter_batches(path)) == 50
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**manifest, "sha256": digest}))
    assert SessionFile(path).manifest["session_id"] == "old-1"
    sidecar.write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    with pytest.raises(SessionFileError, match="sha256"):
        SessionFile(path)


@pytest.mark.parametrize("args, expect", [
    (["plot", "{session}", "-o", "{tmp}/x.txt"], "x.png"),
    (["export", "{session}", "-o", "/missing/dir/x.csv"], "/missing/dir: no such folder"),
    (["export", "{manifest}", "-o", "{tmp}/x.csv"], "is a session's manifest"),
    (["export", "{tmp}/nope.mcap", "-o", "{tmp}/x.csv"], "no such session file"),
    (["export", "{session}", "--format", "edge-impulse", "-o", "-"], "give -o DIR"),
    (["export", "{session}", "-o", "{tmp}/x.mcap"], "add --format ros2-imu, or name it x.csv"),
    (["export", "{session}", "--format", "ros2-imu", "-o", "{tmp}/x.CSV"], "name it x.mcap"),
    (["export", "{session}", "--format", "parquet", "-o", "{tmp}/x.csv"], "x.parquet"),
    (["export", "{session}", "--label", "walk", "-o", "{tmp}/x.csv"], "--format edge-impulse only"),
    (["sessions", "list", "--store", "{tmp}", "--limit", "0"], "give 1 or more"),
    (["sessions", "show", "nope", "--store", "{store}"], "no session nope"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, expect):
    pytest.importorskip("matplotlib")
    _manifest, path = recorded(tmp_path)
    fill = {"session": str(path), "manifest": str(path.with_suffix(".json")),
            "tmp": str(tmp_path), "store": str(tmp_path / "store")}
    r = cli(*[a.format(**fill) for a in args])
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if not x.startswith("usage:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert ".tmp" not in r.stderr and "Traceback" not in r.stderr


def _options(parser: argparse.ArgumentParser, path: str = "edge-recorder"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings and action.dest not in ("help", "version"):
            yield path, action


def test_a_missing_command_names_the_commands_there_are():
    r = cli()
    assert r.returncode == 2 and r.stderr.startswith(
        "edge-recorder: error: missing command: one of run, check-config, selftest, probe, "), \
        r.stderr
    r = cli("sessions")
    assert r.returncode == 2 and r.stderr == ("edge-recorder sessions: error: missing action: "
                                              "one of list, show (see edge-recorder sessions "
                                              "--help)\n"), r.stderr
    r = cli("export", "x.mcap")  # other missing arguments keep argparse's words
    assert r.returncode == 2 and "required: -o/--output" in r.stderr, r.stderr


def test_every_option_has_help_with_an_example():
    missing = [f"{path} {action.option_strings[-1]}" for path, action in
               _options(build_parser()) if not action.help or "e.g." not in action.help]
    assert missing == []


def test_progress_shows_only_on_a_terminal_and_only_after_two_seconds():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    tty = Tty()
    with progress_bar("export", stream=tty, clock=lambda: now[0]) as progress:
        progress(0.1)  # quick work: silent
        now[0] = 2.5
        progress(0.5)
    assert tty.getvalue().startswith("\rexport:  50.0 %") and tty.getvalue().endswith("\x1b[K")
    pipe = io.StringIO()
    with progress_bar("export", stream=pipe, clock=lambda: now[0]) as progress:
        now[0] = 10.0
        progress(0.9)
    assert pipe.getvalue() == ""


def test_sessions_list_sorts_and_limits_and_tables_stay_aligned(tmp_path):
    folder = tmp_path / "sessions"
    folder.mkdir()
    for i, journey in enumerate(["j-1", "a-very-long-journey-id-from-a-phone-app-0001"]):
        m = {"session_id": f"s{i}", "device_id": "demo-pi", "labels": ["x"],
             "journey_id": journey, "started_at": f"2026-11-2{i}T10:00:00.000000Z",
             "stopped_at": f"2026-11-2{i}T10:00:05.000000Z", "duration_s": 5.0 + i,
             "stop_reason": "duration", "bytes": 0, "sha256": "0" * 64, "parts": 1}
        (folder / f"s{i}.json").write_text(json.dumps(m))
        (folder / f"s{i}.mcap").write_bytes(b"")
    r = cli("sessions", "list", "--store", str(tmp_path), "--sort=-started", "--limit", "1")
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["SESSION", "s1"]
    assert r.stderr.strip() == "(1 session(s))"
    r = cli("journeys", "list", "--store", str(tmp_path))
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all("session(s)" not in line for line in lines)
    # every column starts where its header does
    starts = [lines[0].index(h) for h in ("SESSIONS", "FIRST", "LAST", "DEVICES")]
    for line in lines[1:]:
        assert line[starts[-1]:].startswith("demo-pi"), lines
    assert r.stderr.strip() == "(2 journey(s))"
    r = cli("sessions", "show", "s1", "--store", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines][:4] == ["session", "file", "device_id", "labels"]
    # every value starts in one column, after the longest key (pre_trigger_s)
    assert len({len(line) - len(line.split(maxsplit=1)[1]) for line in lines}) == 1, lines


@pytest.mark.broker
def test_collect_against_a_dead_broker_says_so_in_collector_terms(tmp_path, spawn):
    from edge_recorder.devtools import free_port

    port = free_port()
    p = spawn("collect", "--host", "127.0.0.1", "--port", str(port), "--store",
              str(tmp_path / "store"), name="collector")
    wait_until(lambda: "cannot connect" in p.log(), 15, "the collector to report the broker")
    assert p.stop() == 0
    log = p.log()
    assert "check collect --host and --port" in log and "mqtt.host" not in log
    assert "sessions stay on disk" not in log


@pytest.mark.broker
def test_a_clean_sigterm_does_not_warn_about_reconnecting(tmp_path, broker, spawn):
    p = spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store",
              str(tmp_path / "store"), name="collector")
    wait_until(lambda: "connected to" in p.log(), 15, "the collector to connect")
    assert p.stop(signal.SIGTERM) == 0
    assert "reconnecting" not in p.log() and "WARNING" not in p.log()


def test_the_plot_envelope_keeps_every_spike_in_bounded_memory():
    np = pytest.importorskip("numpy")
    from edge_recorder.query.plot import MAX_BINS, Envelope

    t0, n = 1_800_000_000_000_000_000, 1_000_000
    env = Envelope(t0, t0 + n * 1_000_000, MAX_BINS, ["az"])
    for start in range(0, n, 100_000):  # a 1000 s session at 1 kHz, fed in batches
        t = t0 + np.arange(start, start + 100_000, dtype=np.int64) * 1_000_000
        az = np.full(100_000, 9.8, dtype=np.float32)
        if start == 500_000:
            az[123] = 80.0  # one sample's spike
        env.add({"t_ns": t, "az": az})
    x, lo, hi = env.series("az")
    assert len(x) == len(lo) == MAX_BINS  # memory is the bins, not the samples
    assert float(np.nanmax(hi)) == 80.0 and float(np.nanmin(lo)) == pytest.approx(9.8)


def test_the_plot_shades_gaps_and_marks_the_trigger(tmp_path):
    pytest.importorskip("matplotlib")
    from edge_recorder.query.plot import plot_session
    from edge_recorder.sensors.emulation import Faults
    from tests.rig import T0

    # the chip does not answer from 2.0 to 2.4 s on its clock: a gap in the session
    rig = Rig(tmp_path, driver_name="icm42688", rate_hz=200,
              faults=Faults(absent=[(T0 + 2_000_000_000, T0 + 2_400_000_000)]))
    rig.run(1.0)  # history for the pre-trigger window
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"), pre_trigger_s=0.5)["session_id"]
    rig.run(3.0)
    rig.ask(StopRequested, trigger=Trigger("mqtt"))
    rig.finish()
    manifest, path = stored(rig, sid)
    assert len(manifest["sensors"][0]["gaps"]) == 1, manifest["sensors"][0]
    summary = plot_session(path, tmp_path / "p.png")
    assert summary.trigger_s == pytest.approx(0.5, abs=0.02)
    assert summary.gaps_shaded == len(manifest["sensors"][0]["gaps"])
    assert summary.bins == {"imu0": manifest["sensors"][0]["samples"] // 2}
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_an_id_two_devices_used_needs_device_and_a_name_never_reaches_a_path(tmp_path):
    for device in ("pi-a", "pi-b"):
        folder = tmp_path / "sessions" / device
        folder.mkdir(parents=True)
        m = {"session_id": "same-id", "device_id": device, "labels": [], "journey_id": None,
             "started_at": "2026-11-20T10:00:00.000000Z",
             "stopped_at": "2026-11-20T10:00:01.000000Z", "stop_reason": "command",
             "bytes": 0, "sha256": "0" * 64, "parts": 1}
        (folder / "same-id.json").write_text(json.dumps(m))
        (folder / "same-id.mcap").write_bytes(b"")
    r = cli("sessions", "show", "same-id", "--store", str(tmp_path))
    assert r.returncode == 2 and "pi-a, pi-b" in r.stderr and "add --device" in r.stderr
    r = cli("sessions", "show", "same-id", "--store", str(tmp_path), "--device", "pi-b",
            "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["path"].endswith("pi-b/same-id.mcap")
    # an id is only ever looked up in the index, never joined onto a path
    (tmp_path / "outside.mcap").write_bytes(b"\x89MCAP0\r\n")
    r = cli("export", "../outside", "--store", str(tmp_path), "-o", "-")
    assert r.returncode == 2 and "no session ../outside" in r.stderr and r.stdout == ""


def test_the_daemon_never_imports_the_data_extras():
    import subprocess
    import sys

    code = ("import sys, edge_recorder, edge_recorder.app, edge_recorder.cli; "
            "print(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.broker
def test_a_clean_sigterm_of_the_daemon_does_not_warn_about_reconnecting(tmp_path, broker,
                                                                       client, spawn):
    from tests.conftest import base_config, wait_online, write_config

    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    assert daemon.stop(signal.SIGTERM) == 0
    assert "reconnecting" not in daemon.log(), daemon.log()
