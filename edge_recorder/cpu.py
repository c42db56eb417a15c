"""The CPU the daemon may use: its cgroup's quota, and where its threads run under one.

Under a CFS bandwidth quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``; systemd's
``CPUQuota=``) the kernel hands the quota to each CPU's run queue in slices as the group's
threads become runnable there, and once all of it is handed out, a thread that wakes on
another CPU is throttled until the next period (Linux, Documentation/scheduler/
sched-bwc.rst). Threads that wake on two CPUs therefore get less than the quota, in
fragments, and a throttled sampler misses its FIFO's deadline. Below one core a second CPU
adds nothing, so while the quota is that small every thread of the daemon runs on one CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


class CpuLimit:
    """The CPU this process may use, in cores (0.03 is 3 % of one): the tightest quota of
    its cgroup and every ancestor's, v2 or v1; None when unlimited or unknown. Calling it
    costs a few small reads: which files hold the quotas is worked out again only when
    ``/proc/self/cgroup`` changes (the process was moved)."""

    def __init__(self, proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> None:
        self.proc_cgroup = str(proc_cgroup)
        self.root = root
        self._membership: bytes | None = None
        self._groups: list[Path] = []

    def __call__(self) -> float | None:
        membership = _read(self.proc_cgroup)
        if membership is None:
            return None
        if membership != self._membership:
            self._membership, self._groups = membership, self._quota_groups(membership)
        limits = [limit for limit in map(_group_limit, self._groups) if limit is not None]
        return min(limits, default=None)

    def _quota_groups(self, membership: bytes) -> list[Path]:
        """The cgroup directories that may hold a CPU quota for this process: its own in the
        hierarchy the cpu controller is in, and each ancestor's up to that hierarchy's root."""
        groups: list[Path] = []
        for line in membership.decode(errors="replace").splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            hierarchy, controllers, path = parts
            if ".." in path.split("/"):  # above this cgroup namespace's root: not visible
                continue
            if hierarchy == "0" and not controllers:  # v2 (under unified/ on a hybrid system)
                bases = [self.root / "unified", self.root]
            elif "cpu" in controllers.split(","):  # v1, mounted by its controllers' names
                bases = [self.root / controllers, self.root / "cpu"]
            else:
                continue
            base = next((b for b in bases if b.is_dir()), None)
            if base is None:
                continue
            group = base / path.lstrip("/")
            groups.append(group)
            groups.extend(p for p in group.parents if p.is_relative_to(base))
        return groups


def _read(path: str) -> bytes | None:
    """A small kernel file's contents (None if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _group_limit(group: Path) -> float | None:
    """One cgroup's own quota in cores, None if it has none (or it cannot be read)."""
    try:
        text = _read(f"{group}/cpu.max")
        if text is not None:  # v2: "max 100000" or "3000 100000"
            quota, period = text.split()
            return None if quota == b"max" else int(quota) / int(period)
        quota_text = _read(f"{group}/cpu.cfs_quota_us")  # v1: -1 for none
        period_text = _read(f"{group}/cpu.cfs_period_us")
        if quota_text is None or period_text is None or int(quota_text) < 0:
            return None
        return int(quota_text) / int(period_text)
    except (ValueError, ZeroDivisionError):
        return None


class CpuPlacement:
    """Keeps every thread of this process on one CPU while its quota is below one core, and
    gives them back the CPUs they had when it is lifted. :meth:`update` is cheap (a few
    small reads): the supervisor calls it every round, so a quota set or changed while the
    daemon runs is followed within a second."""

    def __init__(self, limit: Callable[[], float | None] | None = None) -> None:
        self._limit = limit or CpuLimit()
        self.usable = hasattr(os, "sched_setaffinity")
        self.allowed = frozenset(os.sched_getaffinity(0)) if self.usable else frozenset()
        self.cpu: int | None = None  # the one CPU every thread runs on, while pinned
        self.limit_cores: float | None = None

    def update(self) -> None:
        self.limit_cores = self._limit()
        want = None
        if self.limit_cores is not None and self.limit_cores < 1 and len(self.allowed) > 1:
            want = max(self.allowed)  # CPU 0 takes most of a Pi's interrupts
        if want == self.cpu:
            return
        self._place(self.allowed if want is None else frozenset({want}))
        self.cpu = want
        if want is None:
            log.info("CPU quota %s: threads may run on CPUs %s again", _share(self.limit_cores),
                     ",".join(map(str, sorted(self.allowed))))
        else:
            log.info("CPU quota %s of a core: every thread now runs on CPU %d, so the "
                     "kernel does not split the quota between CPUs", _share(self.limit_cores),
                     want)

    def close(self) -> None:
        """Every thread back on the CPUs it had."""
        if self.cpu is not None:
            self._place(self.allowed)
            self.cpu = None

    def _place(self, cpus: frozenset[int]) -> None:
        if not self.usable:
            return
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            tasks = ["0"]  # no /proc: this thread only (threads it starts inherit it)
        for task in tasks:
            try:
                os.sched_setaffinity(int(task), cpus)
            except (OSError, ValueError) as exc:  # a thread just ended, say
                log.debug("CPU affinity of thread %s: %s: %s", task, type(exc).__name__, exc)


def _share(limit: float | None) -> str:
    return "lifted" if limit is None else f"{limit * 100:.3g} %"
