"""Two clocks, never one: a monotonic clock for every instant measured or waited for, and a
wall-clock mapping beside it for the epoch times written out.

**Monotonic source: ``CLOCK_BOOTTIME``** (Linux; elsewhere ``time.monotonic_ns``). Like
``CLOCK_MONOTONIC`` it never steps and NTP slews it exactly as it slews the wall clock
(``CLOCK_REALTIME``), so ``wall − mono`` is constant until someone *steps* the wall clock
(NTP's first sync on a Pi without an RTC, ``date -s``). Unlike ``CLOCK_MONOTONIC`` it keeps
counting through a suspend, so a suspended laptop running the daemon or the emulator does
not see its sleep as a clock step, and a session's duration is the time that really passed.

**Wall mapping:** ``wall = mono + offset``. Every reading of the offset (wall read between
two monotonic reads, kept only when they are close together) is compared with the tracked
one; a change of more than :data:`STEP_MIN_NS` is a step: it is recorded as a
:class:`Step` and the new offset adopted. Smaller changes are read noise (slewing does not
change the offset at all; NTP clients step only above 0.125–1 s). The recorder reads the
offset ten times a second while a session is open (a step is detected within ~0.1 s) and
once a second when none is.

**Sync state:** the kernel's, from ``adjtimex(2)`` with ``modes = 0`` (read-only):
``STA_UNSYNC`` (0x0040) clear means an NTP client has disciplined the clock (Linux
``kernel/time/ntp.c``, ``ntp_synced()``). chronyd without ``rtcsync`` keeps ``STA_UNSYNC``
set on purpose (so the kernel leaves the RTC alone) while it keeps the clock's maximum error
small, so a set flag with ``maxerror`` below the kernel's 16 s limit (``NTP_PHASE_LIMIT``, at
which the kernel itself sets ``STA_UNSYNC``) also counts as synchronised, as systemd's
``ntp_synced()`` (``src/basic/time-util.c``) decides. ``None`` where it cannot be asked
(not Linux, or a seccomp filter such as systemd's ``ProtectClock=yes`` refusing the call).

Tests and the emulated world inject the sources: :class:`SteppedWall` steps the wall clock
at given monotonic times (config ``emulation.wall_clock_steps``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STEP_MIN_NS = 5_000_000  # an offset change above this between two readings is a step
READ_BRACKET_NS = 1_000_000  # a reading whose two monotonic reads are further apart is retried
READ_ATTEMPTS = 5
MAX_STEPS_KEPT = 256
STA_UNSYNC = 0x0040  # <linux/timex.h>
TIME_ERROR = 5  # adjtimex return value: clock not synchronised
NTP_PHASE_LIMIT_US = 16_000_000  # kernel: maxerror at (and beyond) this = unsynchronised
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

if hasattr(time, "CLOCK_BOOTTIME"):
    MONO_SOURCE = "CLOCK_BOOTTIME"

    def monotonic_ns() -> int:
        """Nanoseconds on ``CLOCK_BOOTTIME``: never steps, counts through suspend."""
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    MONO_SOURCE = "monotonic"
    monotonic_ns = time.monotonic_ns


@dataclass(frozen=True)
class Step:
    """The wall clock jumped by ``step_ns`` (signed); detected at wall ``at_ns`` (on the
    clock as it is after the step) and monotonic ``mono_ns``."""

    at_ns: int
    step_ns: int
    mono_ns: int

    def as_dict(self) -> dict[str, int]:
        return {"at_ns": self.at_ns, "step_ns": self.step_ns}


class _Timex(ctypes.Structure):
    """``struct timex`` of ``<sys/timex.h>`` (native ``long``; the ABI the plain
    ``adjtimex`` symbol has), padded like the kernel's to its full size."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int), ("_padding", ctypes.c_int * 11),
        ("_spare", ctypes.c_byte * 64),  # room should a libc's struct be larger
    ]


class KernelSync:
    """``synced()``: the kernel's synchronisation flag via read-only ``adjtimex``; None
    where unknown. The reason it is unknown is logged once."""

    def __init__(self) -> None:
        self._adjtimex: Callable[..., int] | None = None
        self.unknown_because = ""
        path = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(path, use_errno=True)
            fn = libc.adjtimex
            fn.argtypes = [ctypes.POINTER(_Timex)]
            fn.restype = ctypes.c_int
            self._adjtimex = fn
        except (OSError, AttributeError) as exc:
            self._unknown(f"no adjtimex in the C library ({exc})")

    def _unknown(self, why: str) -> None:
        if not self.unknown_because:
            log.warning("clock: cannot tell whether the clock is synchronised: %s; sessions "
                        "say synced: null", why)
        self.unknown_because = why

    def __call__(self) -> bool | None:
        if self._adjtimex is None:
            return None
        tx = _Timex()  # modes = 0: read only
        result = self._adjtimex(ctypes.byref(tx))
        if result < 0:
            err = ctypes.get_errno()
            self._unknown(f"adjtimex failed: {os.strerror(err)} (errno {err}); under systemd "
                          "ProtectClock=yes refuses even this read-only call")
            return None
        if not tx.status & STA_UNSYNC and result != TIME_ERROR:
            return True
        return bool(tx.maxerror < NTP_PHASE_LIMIT_US)  # chronyd without rtcsync


def read_boot_id() -> str | None:
    """This boot's id: monotonic instants compare only within one boot."""
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


class SteppedWall:
    """A wall clock that steps: the real one plus every step whose time has come.

    ``steps`` are ``(after_s, step_s)``: ``after_s`` seconds of monotonic time after
    ``start_mono_ns``, the wall clock jumps by ``step_s`` (signed). Until the first step the
    emulated world is a Pi that has not synchronised yet (``synced()`` False); each step is
    its NTP client stepping the clock, after which it is synchronised.
    """

    def __init__(self, steps: Sequence[tuple[float, float]], *,
                 mono: Callable[[], int] = monotonic_ns,
                 wall: Callable[[], int] = time.time_ns,
                 start_mono_ns: int | None = None) -> None:
        self.mono = mono
        self.wall = wall
        self.start_mono_ns = mono() if start_mono_ns is None else start_mono_ns
        self.steps = sorted((int(a * 1e9), int(s * 1e9)) for a, s in steps)

    def _applied(self) -> tuple[int, int]:
        elapsed = self.mono() - self.start_mono_ns
        done = [s for a, s in self.steps if elapsed >= a]
        return len(done), sum(done)

    def __call__(self) -> int:
        return self.wall() + self._applied()[1]

    def synced(self) -> bool:
        return self._applied()[0] > 0


class Clock:
    """The daemon's one clock: :meth:`mono_ns` for instants, the tracked mapping for wall
    times. Thread-safe; every reading of the offset also watches for steps."""

    def __init__(
        self,
        *,
        mono: Callable[[], int] = monotonic_ns,
        wall: Callable[[], int] = time.time_ns,
        synced: Callable[[], bool | None] | None = None,
        source: str = MONO_SOURCE,
        boot_id: str | None = None,
    ) -> None:
        self._mono = mono
        self._wall = wall
        self._synced = synced if synced is not None else KernelSync()
        self.source = source
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque(maxlen=MAX_STEPS_KEPT)
        self._offset_ns, self._tracked_mono_ns = self._read_offset()

    def mono_ns(self) -> int:
        return self._mono()

    def _read_offset(self) -> tuple[int, int]:
        """``(wall − mono, mono)`` from the tightest of a few bracketed readings."""
        best: tuple[int, int, int] | None = None
        for _ in range(READ_ATTEMPTS):
            m1 = self._mono()
            w = self._wall()
            m2 = self._mono()
            mid = (m1 + m2) // 2
            if best is None or m2 - m1 < best[0]:
                best = (m2 - m1, w - mid, mid)
            if m2 - m1 <= READ_BRACKET_NS:
                break
        assert best is not None
        return best[1], best[2]

    def offset_ns(self) -> int:
        """The current ``wall − mono``; a jump since the last reading is recorded as a step."""
        offset, mono = self._read_offset()
        return self._track(offset, mono)

    def _track(self, offset: int, mono: int) -> int:
        """Compare one reading with the tracked mapping. Threads read concurrently: a reading
        taken before the newest one already applied is stale (it could straddle a step the
        other thread has recorded, and would look like a step back) and only answers."""
        with self._lock:
            if mono < self._tracked_mono_ns:
                return self._offset_ns
            self._tracked_mono_ns = mono
            jump = offset - self._offset_ns
            if abs(jump) > STEP_MIN_NS:
                step = Step(at_ns=mono + offset, step_ns=jump, mono_ns=mono)
                self._steps.append(step)
                self._offset_ns = offset
                log.warning("clock: the wall clock stepped by %+.3f s; sessions are expressed "
                            "on the clock as it is now", jump / 1e9)
            return self._offset_ns

    def wall_ns(self) -> int:
        """Now on the wall clock (ns since the epoch), through the tracked mapping."""
        offset = self.offset_ns()
        return self._mono() + offset

    def to_wall(self, mono_ns: int) -> int:
        """A monotonic instant on the wall clock as it is now."""
        return mono_ns + self.offset_ns()

    def steps_since(self, mono_ns: int) -> list[Step]:
        """Steps detected at or after monotonic ``mono_ns``."""
        self.offset_ns()
        with self._lock:
            return [s for s in self._steps if s.mono_ns >= mono_ns]

    def synced(self) -> bool | None:
        """Whether the kernel says an NTP client has synchronised the clock; None if unknown."""
        return self._synced()

    def status(self) -> dict[str, object]:
        """For ``P/status``: sync state and the steps seen since the daemon started."""
        self.offset_ns()
        with self._lock:
            steps = [s.as_dict() for s in self._steps]
        return {"synced": self.synced(), "source": self.source, "steps": steps}


def emulated_clock(steps: Sequence[tuple[float, float]]) -> Clock:
    """The clock of the emulated world: real monotonic time, a wall clock stepping at
    ``steps`` (seconds after now), unsynchronised until its first step."""
    wall = SteppedWall(steps)
    return Clock(wall=wall, synced=wall.synced)
