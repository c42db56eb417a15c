"""The ``edge-recorder`` command line (docs/contract.md §1).

Exit codes: 0 success, 2 bad usage/config/input, 1 anything else. Errors are one
readable line (or one per config problem) on stderr; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_recorder import __version__
from edge_recorder.config import DEFAULT_CONFIG_PATH, MqttConfig
from edge_recorder.errors import ConfigError, EdgeRecorderError, UsageError
from edge_recorder.fsutil import DirectoryInUse, directory_owner, owned_directory
from edge_recorder.log import setup_logging
from edge_recorder.termio import atomic_output, progress_bar

if TYPE_CHECKING:
    from edge_recorder.query.index import Index

log = logging.getLogger("edge_recorder")

EXPORT_FORMATS = ["csv", "parquet", "edge-impulse", "ros2-imu"]
# An output named for one format never holds another (a CSV called session.mcap).
FORMAT_SUFFIXES = {"csv": ".csv", "parquet": ".parquet", "ros2-imu": ".mcap"}
SORT_KEYS: dict[str, Callable[[Any], Any]] = {
    "started": lambda e: e.manifest.started_at,
    "duration": lambda e: e.manifest.duration_s,
    "device": lambda e: (e.manifest.device_id, e.manifest.started_at),
    "id": lambda e: e.manifest.session_id,
}
SORT_KEYS.update({f"-{k}": v for k, v in list(SORT_KEYS.items())})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def _atomic_text(path: Path) -> Any:
    return atomic_output(path, "w", newline="")


def _atomic_binary(path: Path) -> Any:
    return atomic_output(path, "wb")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line (the usage is in --help)
        missing = message.partition("the following arguments are required: ")[2].split(", ")
        for action in self._actions:  # a missing command: name the ones there are
            if isinstance(action, argparse._SubParsersAction) and action.dest in missing:
                message = f"missing {action.dest}: one of {', '.join(action.choices or ())}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logs (e.g. run --debug)")
    common.add_argument("--log-level", default="INFO", metavar="LEVEL",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="DEBUG, INFO (default), WARNING or ERROR (e.g. --log-level "
                             "warning)")
    p = _Parser(prog="edge-recorder", parents=[common],
                description="Record I2C IMU sessions and deliver them over MQTT.")
    p.add_argument("--version", action="version", version=f"edge-recorder {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def config_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                       help=f"YAML config (default {DEFAULT_CONFIG_PATH}; e.g. -c demo.yaml)")

    q = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    config_arg(q)
    q = sub.add_parser("check-config", parents=[common], help="validate a config file")
    config_arg(q)
    q = sub.add_parser("selftest", parents=[common],
                       help="check each configured sensor: identity, bus, rate, gravity, noise")
    config_arg(q)
    q.add_argument("--seconds", type=float, default=5.0, metavar="N",
                   help="record N s from each sensor (default 5; e.g. --seconds 10)")
    q.add_argument("--json", action="store_true",
                   help="one JSON object per sensor (e.g. --json | jq .measured_rate_hz)")
    q = sub.add_parser("probe", parents=[common], help="find IMUs on an I2C bus")
    q.add_argument("--bus", default="1",
                   help="bus number (default 1, /dev/i2c-1) or 'emulated' (e.g. --bus 0)")

    q = sub.add_parser("collect", parents=[common], help="store sessions published over MQTT")
    q.add_argument("--host", required=True, help="the MQTT broker (e.g. --host broker.local)")
    q.add_argument("--port", type=int, default=1883,
                   help="the broker's port (default 1883; e.g. --port 8883)")
    q.add_argument("--store", type=Path, required=True, metavar="DIR",
                   help="where sessions are stored (e.g. --store /srv/sessions)")
    q.add_argument("--topic-prefix", default="edge-recorder", metavar="PREFIX",
                   help="the devices' mqtt.topic_prefix (default edge-recorder; e.g. "
                        "--topic-prefix plant-3)")
    q.add_argument("--client-id", default="edge-recorder-collector", metavar="ID",
                   help="default edge-recorder-collector; fixed, so the broker keeps this "
                        "collector's session while it is down; two collectors on one broker "
                        "need two (e.g. --client-id collector-2)")
    q.add_argument("--username", help="broker user name (e.g. --username collector)")
    q.add_argument("--password-file", type=Path, metavar="FILE",
                   help="file holding the broker password (e.g. --password-file "
                        "/etc/edge-recorder/collector.pass)")
    q.add_argument("--protocol", choices=["5", "3.1.1"], default="5",
                   help="MQTT version (default 5; e.g. --protocol 3.1.1)")
    q.add_argument("--share", metavar="GROUP",
                   help="join an MQTT 5 shared-subscription group: the broker spreads the "
                        "sessions over every collector started with the same GROUP, all on "
                        "one --store (e.g. --share collectors); each member needs its own "
                        "--client-id")
    q.add_argument("--index", metavar="URL",
                   help="index into this database instead of the store's SQLite file, e.g. "
                        "postgresql://collector@db.local/sessions")

    def index_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--index", metavar="URL",
                       help="the index to use instead of the store's own SQLite file, e.g. "
                            "postgresql://collector@db.local/sessions (pip install "
                            "'edge-recorder[postgres]')")

    def store_arg(q: argparse.ArgumentParser, *, required: bool = True) -> None:
        q.add_argument("--store", type=Path, required=required, metavar="DIR",
                       help="the collector's store or the daemon's storage.dir "
                            "(e.g. --store /srv/sessions)")
        q.add_argument("--device", metavar="ID",
                       help="only this device's sessions (e.g. --device demo-pi)")
        index_arg(q)

    def json_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true",
                       help="one JSON object per line, for scripts (e.g. … --json | jq .)")

    def session_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("session", metavar="SESSION",
                       help="a session file (e.g. sessions/20261126T100000000Z-3f2a.mcap) or, "
                            "with --store, a session id (e.g. 20261126T100000000Z-3f2a)")
        store_arg(q, required=False)

    sessions = sub.add_parser("sessions", parents=[common],
                              help="list, filter and show recorded sessions")
    ssub = sessions.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = ssub.add_parser("list", parents=[common], help="list and filter sessions")
    store_arg(q)
    json_arg(q)
    q.add_argument("--label", action="append", default=[],
                   help="must have this label; repeat: must have all (e.g. --label login)")
    q.add_argument("--journey", metavar="ID", help="only this journey (e.g. --journey j-42)")
    q.add_argument("--since", metavar="TIME",
                   help="started at or after: ISO 8601 UTC or an age (e.g. --since 2h, "
                        "--since 2026-11-26T10:00Z)")
    q.add_argument("--until", metavar="TIME",
                   help="started before: ISO 8601 UTC or an age (e.g. --until 30m)")
    q.add_argument("--sort", choices=sorted(SORT_KEYS), default="started", metavar="KEY",
                   help="order by started (default), duration, device or id; a leading - "
                        "reverses (e.g. --sort=-started: newest first)")
    q.add_argument("--limit", type=_positive_int, metavar="N",
                   help="at most N sessions, after sorting (e.g. --limit 20)")
    q.add_argument("--state", choices=["outbox", "published", "stored", "failed"],
                   help="failed: the quarantined items (the collector's rejected/, the "
                        "device's failed/), each with why; on a device's store also outbox "
                        "(not yet published), published (awaiting the collector's receipt), "
                        "stored (receipt received) (e.g. --state failed)")
    q = ssub.add_parser("show", parents=[common], help="one session's manifest and file")
    q.add_argument("session_id", metavar="ID",
                   help="the session id (e.g. 20261126T100000000Z-3f2a)")
    store_arg(q)
    json_arg(q)
    journeys = sub.add_parser("journeys", parents=[common],
                              help="sessions grouped by journeyId")
    jsub = journeys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = jsub.add_parser("list", parents=[common], help="one row per journeyId")
    store_arg(q)
    json_arg(q)

    q = sub.add_parser("export", parents=[common], help="export a session's samples",
                       epilog="examples: export S.mcap -o s.csv; export ID --store /srv/sessions "
                              "--format edge-impulse -o ei/; export S.mcap --format ros2-imu "
                              "-o imu.mcap")
    session_arg(q)
    q.add_argument("--format", choices=EXPORT_FORMATS, default="csv",
                   help="csv (default), parquet (needs the [data] extra), edge-impulse (a "
                        "folder of data acquisition JSON files), ros2-imu (MCAP of "
                        "sensor_msgs/msg/Imu) (e.g. --format parquet)")
    q.add_argument("-o", "--output", type=Path, required=True, metavar="PATH",
                   help="output file, '-' for stdout (csv, ros2-imu), or a folder for "
                        "edge-impulse (e.g. -o session.csv)")
    q.add_argument("--label", metavar="LABEL",
                   help="edge-impulse: the label to train on (default: the session's first "
                        "label) (e.g. --label walking)")
    q.add_argument("--hmac-key-file", type=Path, metavar="FILE",
                   help="edge-impulse: sign each file with the project's HMAC key read from "
                        "FILE (e.g. --hmac-key-file ~/.ei-hmac); unsigned without it")
    q = sub.add_parser("plot", parents=[common], help="PNG of every sensor channel over time",
                       epilog="example: plot ID --store /srv/sessions -o session.png")
    session_arg(q)
    q.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="image to write: .png, .pdf or .svg (e.g. -o session.png)")
    q = sub.add_parser("serve", parents=[common], help="read-only web console over a store",
                       epilog="example: serve --store /srv/sessions (then open "
                              "http://127.0.0.1:8080/)")
    q.add_argument("--store", type=Path, required=True, metavar="DIR",
                   help="the collector's store (e.g. --store /srv/sessions)")
    q.add_argument("--index", metavar="URL",
                   help="the index (default: the store's own SQLite; e.g. --index "
                        "postgresql://edge@db/edge)")
    q.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1; any other needs a token; "
                        "e.g. --bind 0.0.0.0 --token-file F)")
    q.add_argument("--port", type=int, default=8080,
                   help="TCP port (default 8080; e.g. --port 8090)")
    q.add_argument("--token", help="required on every request, 16-256 characters (visible in "
                                   "ps: prefer --token-file; e.g. --token $(openssl rand -hex "
                                   "24))")
    q.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file whose first line is the token (e.g. --token-file "
                        "/etc/edge-recorder/console.token)")
    q.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a name clients use to reach the console, accepted in the Host "
                        "header besides localhost, 127.0.0.1, [::1] and --bind (repeatable; "
                        "e.g. --bind 0.0.0.0 --allow-host collector.lan)")
    return p


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _reload_on_sighup() -> threading.Event:
    reload = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("received SIGHUP: reloading the configuration")
        reload.set()

    signal.signal(signal.SIGHUP, handler)
    return reload


def cmd_run(args: argparse.Namespace) -> int:
    from edge_recorder.app import Daemon, load_checked

    config, credentials = load_checked(args.config)
    # one daemon per storage.dir: a second one would "recover" the first's open sessions
    with owned_directory(config.storage.dir, "storage.dir"):
        stop, reload = _stop_on_signals(), _reload_on_sighup()
        Daemon(config, config_path=args.config, credentials=credentials).run(stop, reload)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_recorder.app import load_checked

    config, _credentials = load_checked(args.config)
    print(f"{args.config}: valid ({len(config.sensors)} sensor(s), device {config.device_id}, "
          f"broker {config.mqtt.host}:{config.mqtt.port}, storage {config.storage.dir})")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from edge_recorder.config import load_config
    from edge_recorder.selftest import format_report, run_selftest

    if not 0.5 <= args.seconds <= 600:
        raise UsageError(f"--seconds {args.seconds:g}: give 0.5 to 600 seconds")
    config = load_config(args.config)
    owner = directory_owner(config.storage.dir)
    if owner is not None:  # the selftest resets and reconfigures the chips under it
        raise DirectoryInUse(f"the daemon runs on this config (pid {owner}, storage.dir "
                             f"{config.storage.dir}); stop it first (systemctl stop "
                             "edge-recorder): the selftest resets the sensors")
    reports = run_selftest(config, args.seconds)
    for report in reports:
        print(json.dumps(report.as_dict()) if args.json else format_report(report))
    failed = [r.name for r in reports if not r.passed]
    if not args.json:
        print(f"selftest failed: {', '.join(failed)}" if failed else
              f"selftest passed: {len(reports)} sensor(s)")
    return 1 if failed else 0


def cmd_probe(args: argparse.Namespace) -> int:
    from edge_recorder.sensors.probe import config_snippet, scan

    bus_id: int | str
    if args.bus == "emulated":
        from edge_recorder.sensors.emulation import (
            EmulatedBus,
            EmulatedIcm42688,
            EmulatedLsm6dsox,
            EmulatedMpu6050,
        )

        bus: Any = EmulatedBus({0x68: EmulatedMpu6050(), 0x69: EmulatedIcm42688(),
                                0x6A: EmulatedLsm6dsox()})
        bus_id = "emulated"
    else:
        try:
            bus_id = int(args.bus)
        except ValueError:
            raise UsageError(f"--bus {args.bus!r}: give a bus number (1) or 'emulated'") from None
        from edge_recorder.app import open_bus

        bus = open_bus(bus_id, [], lambda: 0)
    try:
        found = scan(bus)
    finally:
        bus.close()
    if not found:
        print(f"no supported IMU found on bus {bus_id}; check wiring, power and "
              f"`i2cdetect -y {bus_id}`")
        return 1
    width = max(len(f.variant) for f in found)
    for f in found:
        print(f"0x{f.address:02x}  {f.variant:<{width}}  driver: {f.driver}")
    print("\n" + config_snippet(found, bus_id))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from edge_recorder.collector.collector import Collector
    from edge_recorder.documents import valid_id

    settings = MqttConfig(host=args.host, port=args.port, username=args.username,
                          password_file=args.password_file, protocol=args.protocol,
                          topic_prefix=args.topic_prefix)
    if args.share is not None:
        if not valid_id(args.share):
            raise UsageError(f"--share {args.share!r}: a group name is letters, digits, '_' "
                             "and '-'")
        if args.protocol != "5":
            raise UsageError("--share needs MQTT 5 (--protocol 5)")
    collector = Collector(settings, args.store, topic_prefix=args.topic_prefix,
                          client_id=args.client_id, index_url=args.index,
                          share_group=args.share)
    collector.run(_stop_on_signals())
    return 0


def _report_damaged(index: Index) -> None:
    """A manifest that does not validate is left out of a listing, never breaks it."""
    for path, reason in index.damaged:
        print(f"edge-recorder: warning: {path} left out: {reason}", file=sys.stderr)
    if index.damaged:
        print(f"edge-recorder: warning: {len(index.damaged)} damaged manifest(s) left out "
              "(the collector quarantines them in rejected/)", file=sys.stderr)


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from edge_recorder.query.index import Filters, open_index
    from edge_recorder.query.times import parse_time

    if args.state == "failed":
        return _list_failed(args)
    wanted = Filters(labels=tuple(args.label), journey=args.journey, device=args.device,
                     since=parse_time(args.since) if args.since else None,
                     until=parse_time(args.until) if args.until else None)
    with open_index(args.store, args.index) as index:
        entries = index.select(wanted)
        _report_damaged(index)
    if args.state is not None:
        entries = [e for e in entries if e.state == args.state]
    entries.sort(key=SORT_KEYS[args.sort], reverse=args.sort.startswith("-"))
    if args.limit is not None:
        entries = entries[:args.limit]
    if args.json:
        for e in entries:
            print(json.dumps(e.as_json()))
        return 0
    device_store = any(e.published is not None for e in entries)
    rows = []
    for e in entries:
        m = e.manifest
        row = [m.session_id, m.device_id, m.started_at, f"{m.duration_s:.2f}",
               m.stop_reason, str(m.journey_id), ",".join(m.labels)]
        if device_store:
            row.append(str(e.state))
        rows.append(row)
    header = ["SESSION", "DEVICE", "STARTED (UTC)", "SECONDS", "STOP", "JOURNEY", "LABELS"]
    _table(header + (["STATE"] if device_store else []), rows, right=frozenset({3}))
    _footer(f"({len(entries)} session(s))")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    from edge_recorder.query.index import open_index

    with open_index(args.store, args.index) as index:
        entry = index.find(args.session_id, device=args.device)
    if args.json:
        print(json.dumps(entry.as_json()))
        return 0
    m = entry.manifest.to_dict()
    keys = ("device_id", "labels", "journey_id", "started_at", "stopped_at", "duration_s",
            "stop_reason", "trigger", "pre_trigger_s", "bytes", "sha256")
    rows = [("session", m["session_id"]), ("file", str(entry.path))]
    for key in keys:
        if key in m:
            value = m[key]
            rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else
                         json.dumps(value) if isinstance(value, dict) else str(value)))
    for sensor in entry.manifest.sensors:
        rows.append(("sensor", f"{sensor.name}: {sensor.driver} at {sensor.rate_hz:g} Hz, "
                               f"{sensor.samples} samples, {sensor.dropped} dropped, "
                               f"{len(sensor.gaps)} gap(s)"))
    if entry.published is not None:
        rows.append(("state", str(entry.state)))
    width = max(len(key) for key, _ in rows)
    for key, text in rows:
        print(f"{key:<{width}}  {text}")
    return 0


def _list_failed(args: argparse.Namespace) -> int:
    """Quarantined items: the collector's ``rejected/{device}/{id}/`` (with reason.json)
    and the device's ``failed/``."""
    from edge_recorder.collector.collector import list_rejected

    if not any((args.store / d).is_dir() for d in ("rejected", "failed", "sessions", "outbox")):
        raise UsageError(f"{args.store} is not an edge-recorder store")
    rows: list[dict[str, str | None]] = [
        {"device_id": r.device_id, "session_id": r.session_id, "state": "failed",
         "reason": r.reason, "rejected_at": r.rejected_at, "path": str(r.path)}
        for r in list_rejected(args.store)]
    failed = args.store / "failed"
    if failed.is_dir():  # the device's quarantine
        for path in sorted(failed.glob("*.json")):
            reason = path.with_suffix(".reason")
            rows.append({"device_id": None, "session_id": path.stem, "state": "failed",
                         "reason": reason.read_text().strip() if reason.exists() else None,
                         "rejected_at": None, "path": str(path)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{'SESSION':<31} {'DEVICE':<16} {'SINCE (UTC)':<21} REASON")
        for row in rows:
            print(f"{row['session_id']:<31} {str(row['device_id']):<16} "
                  f"{str(row['rejected_at'] or ''):<21} {row['reason'] or ''}")
    print(f"({len(rows)} failed)", file=sys.stderr)
    return 0


def cmd_journeys_list(args: argparse.Namespace) -> int:
    from edge_recorder.query.index import open_index

    with open_index(args.store, args.index) as index:
        rows = index.journeys()
        _report_damaged(index)
    if args.device:
        rows = [r for r in rows if args.device in r["devices"]]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    _table(["JOURNEY", "SESSIONS", "FIRST (UTC)", "LAST (UTC)", "DEVICES"],
           [[str(r["journey_id"]), str(r["sessions"]), str(r["first_started_at"] or ""),
             str(r["last_stopped_at"] or ""), ",".join(map(str, r["devices"]))] for r in rows],
           right=frozenset({1}))
    _footer(f"({len(rows)} journey(s))")
    return 0


def _table(header: list[str], rows: list[list[str]], *,
           right: frozenset[int] = frozenset()) -> None:
    """Columns as wide as their widest cell; the last one unpadded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for cells in (header, *rows):
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        print("  ".join(parts[:-1] + [cells[-1]]).rstrip())


def _footer(text: str) -> None:
    """A count for people, after the table (stdout first, so the two never interleave)."""
    sys.stdout.flush()
    print(text, file=sys.stderr)


def _session_path(args: argparse.Namespace) -> Path:
    """The session file SESSION names: a path, or an id looked up in --store's index."""
    given = Path(args.session)
    if given.suffix == ".json":
        raise UsageError(f"{given} is a session's manifest; give its session file "
                         f"{given.with_suffix('.mcap')} (or the id with --store)")
    if given.is_file():
        return given
    if args.store is None:
        if given.suffix == ".mcap" or "/" in args.session:
            raise UsageError(f"{given}: no such session file")
        raise UsageError(f"{given}: no such session file; to use a session id, add --store "
                         "DIR")
    from edge_recorder.query.index import open_index

    with open_index(args.store, args.index) as index:
        return index.find(args.session, device=args.device).path


def _output_dir_exists(output: Path) -> None:
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: no such folder for --output {output}")


def _check_suffix(fmt: str, output: Path) -> None:
    suffix = output.suffix.lower()
    meant = next((f for f, s in FORMAT_SUFFIXES.items() if s == suffix), None)
    if meant is not None and meant != fmt:
        given = "--format csv (the default)" if fmt == "csv" else f"--format {fmt}"
        raise UsageError(f"-o {output}: a {suffix} name, but {given} writes {fmt}; add "
                         f"--format {meant}, or name it "
                         f"{output.with_suffix(FORMAT_SUFFIXES[fmt]).name}")


def cmd_export(args: argparse.Namespace) -> int:
    from edge_recorder.sessionfile import SessionFile

    path = _session_path(args)
    to_stdout = str(args.output) == "-"
    if args.format == "edge-impulse":
        if to_stdout:
            raise UsageError("--format edge-impulse writes a folder of files; give -o DIR")
        if args.output.exists() and not args.output.is_dir():
            raise UsageError(f"{args.output} is a file; edge-impulse needs a folder for -o")
        _output_dir_exists(args.output)
    elif not to_stdout:
        if args.output.is_dir():
            raise UsageError(f"{args.output} is a folder; give a file name for -o")
        _check_suffix(args.format, args.output)
        _output_dir_exists(args.output)
    if to_stdout and args.format == "parquet":
        raise UsageError("--format parquet needs a file for -o, not stdout")
    if args.hmac_key_file is not None and args.format != "edge-impulse":
        raise UsageError("--hmac-key-file signs edge-impulse files only")
    if args.label is not None and args.format != "edge-impulse":
        raise UsageError("--label sets the class edge-impulse files train on; it is for "
                         "--format edge-impulse only")
    key = None
    if args.hmac_key_file is not None:
        try:
            key = args.hmac_key_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"--hmac-key-file {args.hmac_key_file}: cannot read it "
                             f"({exc.strerror or exc})") from None
    session = SessionFile(path)
    with progress_bar(f"export {args.format}") as progress:
        if args.format == "edge-impulse":
            from edge_recorder.query.edge_impulse import default_label, write_edge_impulse

            label = default_label(session, args.label)
            args.output.mkdir(exist_ok=True)
            written = write_edge_impulse(
                session, lambda name: _atomic_binary(args.output / name), label=label,
                hmac_key=key, progress=progress)
            summary = f"{len(written)} file(s), label {label!r}"
        elif args.format == "csv":
            from edge_recorder.query.export import write_csv

            if to_stdout:
                write_csv(session, sys.stdout, progress=progress)
                return 0
            with _atomic_text(args.output) as out:
                rows = write_csv(session, out, progress=progress)
            summary = f"{rows} rows"
        elif args.format == "parquet":
            from edge_recorder.query.export import write_parquet

            with _atomic_binary(args.output) as bout:
                rows = write_parquet(session, bout, progress=progress)
            summary = f"{rows} rows"
        else:
            from edge_recorder.query.ros2_imu import write_ros2_imu

            if to_stdout:
                write_ros2_imu(session, sys.stdout.buffer, progress=progress)
                return 0
            with _atomic_binary(args.output) as bout:
                messages = write_ros2_imu(session, bout, progress=progress)
            summary = f"{messages} sensor_msgs/msg/Imu messages"
    print(f"{args.output}: {summary}", file=sys.stderr)
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def cmd_plot(args: argparse.Namespace) -> int:
    if args.output.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"{args.output}: plot writes {', '.join(PLOT_SUFFIXES)} images; "
                         f"name the output e.g. {args.output.with_suffix('.png').name}")
    _output_dir_exists(args.output)
    path = _session_path(args)
    from edge_recorder.query.plot import plot_session

    with progress_bar("plot") as progress:
        plot_session(path, args.output, progress=progress)
    print(f"{args.output}: written", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from edge_recorder.console.serve import serve

    return serve(args.store, index_url=args.index, bind=args.bind, port=args.port,
                 token=args.token, token_file=args.token_file, allow_host=args.allow_host)


COMMANDS = {
    ("run", None): cmd_run,
    ("check-config", None): cmd_check_config,
    ("probe", None): cmd_probe,
    ("selftest", None): cmd_selftest,
    ("collect", None): cmd_collect,
    ("sessions", "list"): cmd_sessions_list,
    ("sessions", "show"): cmd_sessions_show,
    ("journeys", "list"): cmd_journeys_list,
    ("export", None): cmd_export,
    ("plot", None): cmd_plot,
    ("serve", None): cmd_serve,
}


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (``… -o - | head -1``): stop quietly, as a command
    killed by SIGPIPE would (exit 141), and keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, debug=args.debug)
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        code = command(args)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit handler
        return code
    except BrokenPipeError:
        return _reader_went_away()
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"edge-recorder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (EdgeRecorderError, OSError) as exc:
        if args.debug:
            raise
        print(f"edge-recorder: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"edge-recorder: unexpected error: {exc!r} (run with --debug for details)",
              file=sys.stderr)
        return 1
