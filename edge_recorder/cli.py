"""The ``edge-recorder`` command line (SPEC §2).

Exit codes: 0 success, 2 bad usage/config/input, 1 anything else. Errors are one
readable line (or one per config problem) on stderr; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_recorder import __version__
from edge_recorder.config import DEFAULT_CONFIG_PATH, MqttConfig, load_config
from edge_recorder.errors import ConfigError, EdgeRecorderError, UsageError
from edge_recorder.log import setup_logging

if TYPE_CHECKING:
    from edge_recorder.query.index import Index

log = logging.getLogger("edge_recorder")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    p = _Parser(prog="edge-recorder", parents=[common],
                description="Record I2C IMU sessions and deliver them over MQTT.")
    p.add_argument("--version", action="version", version=f"edge-recorder {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def config_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                       help=f"YAML config (default {DEFAULT_CONFIG_PATH})")

    q = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    config_arg(q)
    q = sub.add_parser("check-config", parents=[common], help="validate a config file")
    config_arg(q)
    q = sub.add_parser("probe", parents=[common], help="find IMUs on an I2C bus")
    q.add_argument("--bus", default="1", help="bus number (default 1) or 'emulated'")

    q = sub.add_parser("collect", parents=[common], help="store sessions published over MQTT")
    q.add_argument("--host", required=True)
    q.add_argument("--port", type=int, default=1883)
    q.add_argument("--store", type=Path, required=True)
    q.add_argument("--topic-prefix", default="edge-recorder")
    q.add_argument("--client-id", default="edge-recorder-collector",
                   help="fixed, so the broker keeps this collector's session while it is down")
    q.add_argument("--username")
    q.add_argument("--password-file", type=Path)
    q.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
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

    def store_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", type=Path, required=True,
                       help="the collector's store or the daemon's storage.dir")
        q.add_argument("--json", action="store_true", help="one JSON object per line")
        index_arg(q)

    sessions = sub.add_parser("sessions", parents=[common], help="stored sessions")
    ssub = sessions.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = ssub.add_parser("list", parents=[common], help="list and filter sessions")
    store_arg(q)
    q.add_argument("--label", action="append", default=[],
                   help="must have this label (repeat: must have all)")
    q.add_argument("--journey")
    q.add_argument("--device")
    q.add_argument("--since", help="ISO 8601 UTC time or an age (30m, 2h, 7d)")
    q.add_argument("--until", help="ISO 8601 UTC time or an age (30m, 2h, 7d)")
    q.add_argument("--state", choices=["failed"],
                   help="failed: the quarantined items (the collector's rejected/, the "
                        "device's failed/), each with why")
    journeys = sub.add_parser("journeys", parents=[common], help="journeys")
    jsub = journeys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    store_arg(jsub.add_parser("list", parents=[common], help="one row per journeyId"))

    q = sub.add_parser("export", parents=[common], help="export a session's samples")
    q.add_argument("session_file", type=Path)
    q.add_argument("--format", choices=["csv"], default="csv")
    q.add_argument("-o", "--output", type=Path, required=True, help="output file ('-' = stdout)")
    q = sub.add_parser("plot", parents=[common], help="PNG of every sensor channel over time")
    q.add_argument("session_file", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True)
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
    from edge_recorder.app import Daemon

    config = load_config(args.config)
    stop, reload = _stop_on_signals(), _reload_on_sighup()
    Daemon(config, config_path=args.config).run(stop, reload)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: valid ({len(config.sensors)} sensor(s), device {config.device_id}, "
          f"broker {config.mqtt.host}:{config.mqtt.port}, storage {config.storage.dir})")
    return 0


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
    for f in found:
        print(f"0x{f.address:02x}  {f.variant:<12} driver: {f.driver}")
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
    from edge_recorder.query.index import open_index
    from edge_recorder.query.times import parse_time

    if args.state == "failed":
        return _list_failed(args)
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    with open_index(args.store, args.index) as index:
        entries = index.select(labels=args.label, journey=args.journey, device=args.device,
                               since=since, until=until)
        _report_damaged(index)
    if args.json:
        for e in entries:
            print(json.dumps(e.as_json()))
        return 0
    device_store = any(e.published is not None for e in entries)
    header = f"{'SESSION':<31} {'DEVICE':<16} {'STARTED (UTC)':<27} {'SECONDS':>8}  " \
             f"{'STOP':<12} {'JOURNEY':<30} LABELS"
    print(header + ("  PUBLISHED" if device_store else ""))
    for e in entries:
        m = e.manifest
        line = (f"{m.session_id:<31} {m.device_id:<16} {m.started_at:<27} "
                f"{m.duration_s:>8.2f}  {m.stop_reason:<12} {str(m.journey_id):<30} "
                f"{','.join(m.labels)}")
        if device_store:
            line += f"  {'yes' if e.published else 'no'}"
        print(line)
    print(f"({len(entries)} session(s))", file=sys.stderr)
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
            rows.append({"device_id": None, "session_id": path.stem, "state": "failed",
                         "reason": None, "rejected_at": None, "path": str(path)})
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
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'JOURNEY':<40} {'SESSIONS':>8}  {'FIRST (UTC)':<27} {'LAST (UTC)':<27} DEVICES")
    for r in rows:
        print(f"{r['journey_id']:<40} {r['sessions']:>8}  {r['first_started_at']:<27} "
              f"{r['last_stopped_at']:<27} {','.join(map(str, r['devices']))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge_recorder.query.export import write_csv

    _need_file(args.session_file)
    if str(args.output) == "-":
        write_csv(args.session_file, sys.stdout)
        return 0
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    with open(tmp, "w", newline="") as out:
        rows = write_csv(args.session_file, out)
    tmp.replace(args.output)
    print(f"{args.output}: {rows} rows", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from edge_recorder.query.plot import plot_session

    _need_file(args.session_file)
    plot_session(args.session_file, args.output)
    print(f"{args.output}: written", file=sys.stderr)
    return 0


def _need_file(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"{path}: no such session file")


COMMANDS = {
    ("run", None): cmd_run,
    ("check-config", None): cmd_check_config,
    ("probe", None): cmd_probe,
    ("collect", None): cmd_collect,
    ("sessions", "list"): cmd_sessions_list,
    ("journeys", "list"): cmd_journeys_list,
    ("export", None): cmd_export,
    ("plot", None): cmd_plot,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, debug=args.debug)
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return command(args)
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
