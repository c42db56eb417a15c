"""Harness tools for the tests, benchmarks and demos: a throwaway Mosquitto (and PostgreSQL)
on a free loopback port, and a CPU quota (a cgroup) to starve a process as a busy Pi would.

Like gpiozero's MockFactory, they ship in the package so every harness uses the same one.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               poll_s: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy and return it; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def find_mosquitto() -> str | None:
    for candidate in (shutil.which("mosquitto"), *MOSQUITTO_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by ``mosquitto_passwd``) for ``users``."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True,
                       capture_output=True)
    return path


class Broker:
    """A Mosquitto process with persistence (saved every second), restartable on its port."""

    def __init__(self, workdir: Path, binary: str | None = None, *,
                 password_file: Path | None = None, acl_file: Path | None = None,
                 persistence: bool = True) -> None:
        """``password_file`` (see :func:`write_password_file`) turns anonymous access off;
        ``acl_file`` is Mosquitto's ``acl_file`` (e.g. config/mosquitto.acl);
        ``persistence=False``: a restart forgets every session and queued message (as a
        broker with a default 30-minute autosave does at a power cut)."""
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto is not installed (sudo apt-get install mosquitto)")
        self.binary = found
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("allow_anonymous true\n" if password_file is None else
               f"allow_anonymous false\npassword_file {password_file}\n")
            + ("" if acl_file is None else f"acl_file {acl_file}\n") +
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {workdir}/\n"
            # sessions saved every second, so a killed broker comes back knowing the
            # collector's persistent subscription (as a production broker should)
            "autosave_interval 1\nmax_queued_messages 10000\nlog_dest stderr\n"
            # started as root, mosquitto would switch to user "mosquitto" and lose access
            # to the files here; stay the user who runs the tests
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float = 10.0) -> None:
        with open(self.workdir / "broker.log", "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout_s
        while not self.accepting():
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not listen on port {self.port}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


class Postgres:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
    system user that Debian's package creates; its data lives in a fresh directory under
    the system temp dir (a pytest ``tmp_path`` is not reachable by another user).
    """

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_postgres_bin()
        if found is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed (sudo apt-get install postgresql)")
        self.bindir = found
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-recorder-pg-"))
        self.datadir = self.workdir / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            try:
                pw = pwd.getpwnam(self._user)
            except KeyError as e:
                raise FileNotFoundError("as root, PostgreSQL needs the 'postgres' user "
                                        "(created by Debian's postgresql package)") from e
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://edge@127.0.0.1:{self.port}/edge"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def start(self) -> None:
        fresh = not self.datadir.exists()
        if fresh:
            self._run("initdb", "-D", str(self.datadir), "-U", "edge", "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.workdir / "server.log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-c unix_socket_directories={self.workdir} -c fsync=off "
                  "-c max_connections=200", "start")
        self.started = True
        if fresh:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "edge", "edge")

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
            self.started = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
_group_numbers = itertools.count()
MIN_QUOTA_US = 1000  # the kernel refuses a smaller cpu.cfs_quota_us / cpu.max quota


class CpuQuota:
    """A cgroup CPU quota for whole processes: ``quota_us`` of CPU per ``period_us``.

    cgroup v1 (``cpu.cfs_quota_us``/``cpu.cfs_period_us`` under ``/sys/fs/cgroup/cpu``) or
    v2 (``cpu.max``, the ``cpu`` controller enabled for the root's children). Needs root
    (or a delegated subtree). :meth:`unavailable` says why it cannot work here, or ''.
    """

    def __init__(self, period_us: int = 40_000, name: str = "edge-recorder") -> None:
        self.period_us = period_us
        self.version, root = self._find()
        self.path = root / f"{name}-{os.getpid()}-{next(_group_numbers)}"
        self.path.mkdir()
        self.set_share(None)

    @staticmethod
    def _find() -> tuple[int, Path]:
        if (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
            return 1, CGROUP_V1_CPU
        controllers = CGROUP_V2 / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            subtree = CGROUP_V2 / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            return 2, CGROUP_V2
        raise OSError("no cgroup cpu controller: neither /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
                      "(v1) nor \"cpu\" in /sys/fs/cgroup/cgroup.controllers (v2)")

    @classmethod
    def unavailable(cls) -> str:
        """Why a quota cannot be set here ('' when it can): tried by making a group."""
        try:
            cls(name="edge-recorder-probe").close()
        except OSError as exc:
            return f"cgroup CPU quotas are not available here ({type(exc).__name__}: {exc})"
        return ""

    def set_share(self, share: float | None) -> int:
        """Limit to ``share`` of one core (0.03 = 3 %), or lift the limit with None.

        The kernel's smallest quota is 1 ms: a share below 1 ms per period gets a longer
        period (1 ms per 50 ms for 2 %). Returns the period used, in µs.
        """
        period = self.period_us
        quota = -1
        if share is not None:
            period = max(period, round(MIN_QUOTA_US / share))
            quota = round(share * period)
        if self.version == 1:
            (self.path / "cpu.cfs_quota_us").write_text("-1")  # period may shrink below it
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {period}")
        return period

    def add(self, pid: int) -> None:
        """Move a process (all its threads, and the ones it starts later) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_us(self) -> int:
        """Total time the group was held back by its quota so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":  # v1, ns
                return int(value) // 1000
            if key == "throttled_usec":  # v2
                return int(value)
        return 0

    def close(self) -> None:
        """Move any remaining processes back to the root group and remove the group."""
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self.path.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        self.path.rmdir()

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
