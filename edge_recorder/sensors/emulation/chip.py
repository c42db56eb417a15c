"""The parts every emulated IMU shares: register image, a FIFO filling on a clock, faults.

The FIFO fills at the rate the chip's registers select, times ``1 + clock_error``
(real oscillators are off by up to a few percent), on the injected clock. Each frame's
true sampling instant is kept beside it so tests can measure timestamp error exactly.

As strict as the chips, so a driver that passes here survives real parts:

* the bus tells the chip *when* each transfer happens (bus time advances while bytes
  cross the wire), so frames arrive between a FIFO count read and the burst after it;
* a full FIFO overwrites its oldest data in the chip's own unit (``overflow_unit_bytes``:
  single bytes on the MPU, so frames misalign; 7-byte words on the LSM6DSOX; whole
  packets on the ICM-42688) and keeps the newest, as the silicon does;
* a reset takes time (``reset_ns``), during which the chip does not acknowledge;
* :class:`Faults` can lose register writes, so drivers must read their configuration back.

Cheap enough to stand in for hardware on a Pi (about 1 µs a sample instead of 10–20): the
samples' values (motion plus noise) and their encoded frames are computed once into a
table per register configuration (:meth:`EmulatedChip.format_key`), and the FIFO fills by
slicing that table's bytes. A chip's :meth:`~EmulatedChip.fifo_frame` stays the one
definition of its frames; two hooks keep per-frame state exact:

* :meth:`EmulatedChip.patch_frames` writes what changes frame by frame (a packet counter,
  a tag counter) into the sliced frames and advances the chip's counter;
* :meth:`EmulatedChip.per_sample_frames` says how many of the next frames are special
  (bootstrap or start-up samples): those are encoded one by one by ``fifo_frame``.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_recorder.clock import monotonic_ns
from edge_recorder.sensors.emulation.motion import AtRest, Motion, Vector

ACCEL_NOISE_MPS2 = 0.02
GYRO_NOISE_RADS = 0.002
TEMP_NOISE_C = 0.05
NOISE_SAMPLES = 1024  # noise repeats after this many samples (a multiple of 4, see below)
MAX_TABLE_SAMPLES = 16384
TABLES_KEPT = 4  # configurations remembered (a driver's reset sequence passes through a few)


@dataclass(frozen=True)
class FrameTable:
    """One configuration's frames for table positions 0 … length-1, back to back.

    ``length`` is a multiple of 4 so a 2-bit tag counter carried in the frames (LSM6DSOX)
    stays continuous when the table wraps.
    """

    frames: bytes
    frame_bytes: int
    length: int


@dataclass
class Faults:
    """Faults to inject. Times are on the chip's (monotonic) clock, in ns."""

    error_rate: float = 0.0
    """Fraction of transactions that fail with EIO."""
    absent: list[tuple[int, int]] = field(default_factory=list)
    """Windows ``(start_ns, end_ns)`` during which the chip does not answer (EREMOTEIO)
    and after which it comes back power-cycled, registers at their reset values."""
    hang_from_ns: int | None = None
    """From this time on every transaction blocks, as on a wedged bus (until closed)."""
    lost_writes: dict[int, int] = field(default_factory=dict)
    """Register → how many of the next writes to it are lost on the wire (acknowledged,
    never stored), as a glitch or a brown-out can do."""


class EmulatedChip:
    """Base of the chip emulators; subclasses describe their registers and frame format."""

    default_address: int = 0x00
    fifo_capacity_bytes: int = 1024
    fifo_port: int = -1
    overflow_unit_bytes: int = 1
    """What a full FIFO drops to make room: 1 = single bytes (frames misalign)."""
    reset_ns: int = 0
    """How long a soft reset keeps the chip off the bus (no ACK)."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] = monotonic_ns,
        clock_error: float = 0.0,
        motion: Motion | None = None,
        noise: bool = True,
        seed: int = 0,
        faults: Faults | None = None,
        record_truth: bool = False,
    ) -> None:
        """``record_truth`` keeps every delivered frame's true sampling instant in
        ``delivered_true_ns`` (tests and benchmarks); off in the daemon, where it would grow
        without bound."""
        self.clock = clock
        self.record_truth = record_truth
        self.clock_error = clock_error
        self.motion = motion or AtRest()
        self.noise = noise
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.regs = bytearray(256)
        self.fifo = bytearray()
        self.fifo_true_ns: list[int] = []  # true instant of each whole frame in the FIFO
        self.fifo_removed_bytes = 0
        self.delivered_true_ns: list[int] = []  # true instants of frames read out, in order
        self.samples_generated = 0
        self._start_ns: int | None = None
        self._next_k = 1
        self._was_absent = False
        self.resetting_until_ns = 0
        self.now_ns = 0  # bus time of the transfer being served
        self.sample_ns = 0
        self._noise: list[tuple[float, ...]] = []
        self._tables: dict[tuple[bytes, float], FrameTable] = {}
        self.power_on_reset()

    # --- what subclasses describe -------------------------------------------------
    def power_on_reset(self) -> None:
        """Put every register at its power-on value and empty the FIFO."""
        self.regs[:] = bytes(256)
        self.clear_fifo()
        self._start_ns = None
        self._latched: tuple[int, float] | None = None  # newest sample, not yet in the regs
        self._current: tuple[float, FrameTable] | None = None  # the table until a write

    def nominal_period_ns(self) -> float | None:
        """Sample period the registers select, or None while the chip does not sample."""
        raise NotImplementedError

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        """Encode one sample as the chip's FIFO frame (empty if the FIFO is off)."""
        raise NotImplementedError

    def update_data_registers(self, accel: Vector, gyro: Vector, temp_c: float) -> None:
        """Latch a sample into the output data registers."""

    data_registers: range = range(256)
    """The output registers :meth:`update_data_registers` writes; they are brought up to
    date only when a read touches them (the default, every register, is correct but slow)."""

    format_registers: tuple[int, ...] = tuple(range(256))
    """Registers whose values decide the frames' bytes; subclasses name theirs (the
    default, every register, is correct but rebuilds the table far too often)."""

    def format_key(self) -> bytes:
        """What the frame table depends on besides the period (see :attr:`format_registers`)."""
        regs = self.regs
        return bytes(regs[r] for r in self.format_registers)

    def patch_frames(self, frames: bytearray, count: int) -> None:
        """Write what differs frame by frame (a packet counter) into ``count`` frames sliced
        from the table, and advance it; most chips have nothing of the kind."""

    def per_sample_frames(self, first_ns: int, period_ns: float) -> int:
        """How many of the next frames (the first sampled at ``first_ns``, then one every
        ``period_ns``) :meth:`fifo_frame` must encode one by one, with ``sample_ns`` set to
        each one's instant: start-up or bootstrap samples, a flagged first packet. The
        table serves the rest, built in the steady state (:meth:`enter_steady_state`)."""
        return 0

    def on_fifo_overflow(self) -> None:
        """Set the chip's overflow flag."""

    def read_register(self, register: int) -> int:
        """One byte, with the chip's read side effects (clear-on-read, counters)."""
        return self.regs[register]

    def write_register(self, register: int, value: int) -> None:
        self.regs[register] = value

    def next_register(self, register: int) -> int:
        """Auto-increment for burst reads (FIFO ports do not advance)."""
        return register if register == self.fifo_port else (register + 1) & 0xFF

    def start_reset(self) -> None:
        """A soft reset: registers to power-on values, off the bus for ``reset_ns``.

        Timed on the injected clock (the one the driver sleeps on), not on bus time,
        which may run a transfer or two ahead of it."""
        self.power_on_reset()
        self.resetting_until_ns = self.clock() + self.reset_ns

    # --- the bus side ----------------------------------------------------------------
    def present(self, now_ns: int) -> bool:
        """Whether the chip acknowledges its address at ``now_ns``."""
        absent = bool(self.faults.absent) and any(
            start <= now_ns < end for start, end in self.faults.absent)
        if absent:
            self._was_absent = True
        elif self._was_absent:
            self._was_absent = False
            self.power_on_reset()  # came back after losing power
        return not absent and now_ns >= self.resetting_until_ns

    def read(self, register: int, length: int, now_ns: int | None = None) -> bytes:
        """A burst read as the bus delivers it; ``now_ns`` is when its data phase starts."""
        self.advance(now_ns)
        if register == self.fifo_port:
            return self.pop_fifo(length)
        if self._latched is not None and register < self.data_registers.stop and \
                register + length > self.data_registers.start:
            pos, period = self._latched  # the output registers, written when read
            self._latched = None
            self.update_data_registers(*self._values(pos, period))
        out = bytearray()
        for _ in range(length):
            out.append(self.read_register(register))
            register = self.next_register(register)
        return bytes(out)

    def write(self, register: int, value: int, now_ns: int | None = None) -> None:
        self.advance(now_ns)
        lost = self.faults.lost_writes.get(register, 0)
        if lost:
            self.faults.lost_writes[register] = lost - 1
            return
        self.write_register(register, value & 0xFF)
        self._current = None  # the configuration may have changed: look the table up again

    # --- FIFO and sampling ------------------------------------------------------------
    def clear_fifo(self) -> None:
        self.fifo.clear()
        self.fifo_true_ns.clear()
        self.fifo_removed_bytes = 0  # bytes taken from the head since the FIFO started

    def pop_fifo(self, length: int) -> bytes:
        data = bytes(self.fifo[:length])
        del self.fifo[:length]
        self.fifo_removed_bytes += len(data)
        frame = self.frame_size() if self.record_truth else 0
        if frame:
            whole = min(len(data) // frame, len(self.fifo_true_ns))
            self.delivered_true_ns += self.fifo_true_ns[:whole]
            del self.fifo_true_ns[:whole]
        return data + b"\xff" * (length - len(data))

    def frame_size(self) -> int:
        return len(self.fifo_frame((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 25.0))

    def restart_sampling(self) -> None:
        """Rate or power changed: the next sample comes one new period from now."""
        self._start_ns = None

    def advance(self, now_ns: int | None = None) -> None:
        """Generate every sample due up to ``now_ns`` (default: the clock's now).

        Sample ``k`` (k ≥ 1) falls at ``start + k · period``, kept as an integer start and a
        count, so hours of emulated time at epoch-sized nanoseconds lose no precision.
        """
        period = self.nominal_period_ns()
        now = self.clock() if now_ns is None else now_ns
        self.now_ns = now
        if period is None:
            self._start_ns = None
            return
        period /= 1.0 + self.clock_error
        if self._start_ns is None:
            self._start_ns, self._next_k = now, 1
            return
        last_due = int((now - self._start_ns) // period)
        due = last_due - self._next_k + 1
        if due <= 0:
            return
        frame = self.frame_size()
        keep = self.fifo_capacity_bytes // max(frame, 1) + 1
        if due > keep:  # a stalled reader: only the newest FIFO-full can survive anyway
            skipped = due - keep
            self._next_k += skipped
            self.samples_generated += skipped
            due = keep  # the writes below overwrite the oldest data exactly as the chip does
        self._generate(due, period, frame)

    def _generate(self, count: int, period: float, frame: int) -> None:
        """Samples ``_next_k`` … ``_next_k + count - 1``: the data registers latch the newest,
        the FIFO gets their frames, sliced from the table for this configuration."""
        k0 = self._next_k
        self._next_k += count
        self.samples_generated += count
        start = self._start_ns
        assert start is not None
        length = self._table_length(period)
        self.sample_ns = start + int((k0 + count - 1) * period)
        self._latched = ((k0 + count - 1) % length, period)  # see read()
        if not frame:
            return
        special = min(count, self.per_sample_frames(start + int(k0 * period), period))
        frames = bytearray()
        for k in range(k0, k0 + special):
            self.sample_ns = start + int(k * period)
            frames += self.fifo_frame(*self._values(k % length, period))
        table = self._table(period, length, frame)
        tabled = bytearray()
        pos, left = (k0 + special) % length, count - special
        while left:
            take = min(left, length - pos)
            tabled += table.frames[pos * frame:(pos + take) * frame]
            left -= take
            pos = 0
        self.patch_frames(tabled, count - special)
        frames += tabled
        self.fifo += frames
        if self.record_truth:  # per-sample work: only for the tests that check timestamps
            self.fifo_true_ns.extend([start + int(k * period) for k in range(k0, k0 + count)])
        excess = len(self.fifo) - self.fifo_capacity_bytes
        if excess > 0:  # the oldest data is overwritten, in the chip's own unit
            unit = self.overflow_unit_bytes
            excess = -(-excess // unit) * unit
            del self.fifo[:excess]
            self.fifo_removed_bytes += excess
            if self.record_truth:
                del self.fifo_true_ns[:len(self.fifo_true_ns) - len(self.fifo) // frame]
            self.on_fifo_overflow()

    # --- the tables ---------------------------------------------------------------------
    def _table_length(self, period: float) -> int:
        """One cycle of a periodic motion (so it wraps seamlessly), else the noise's."""
        cycle_s: float | None = getattr(self.motion, "period_s", None)
        if not cycle_s:
            return NOISE_SAMPLES
        return max(4, min(MAX_TABLE_SAMPLES, round(cycle_s * 1e9 / period / 4) * 4))

    def _values(self, pos: int, period: float) -> tuple[Vector, Vector, float]:
        """The sample at table position ``pos``: motion at ``pos`` periods, plus noise."""
        accel, gyro = self.motion(pos * period / 1e9)
        if not self.noise:
            return accel, gyro, 25.0
        if not self._noise:
            g = self.rng.gauss
            a, w, t = ACCEL_NOISE_MPS2, GYRO_NOISE_RADS, TEMP_NOISE_C
            self._noise = [(g(0, a), g(0, a), g(0, a), g(0, w), g(0, w), g(0, w), g(0, t))
                           for _ in range(NOISE_SAMPLES)]
        n = self._noise[pos % NOISE_SAMPLES]
        return ((accel[0] + n[0], accel[1] + n[1], accel[2] + n[2]),
                (gyro[0] + n[3], gyro[1] + n[4], gyro[2] + n[5]), 25.0 + n[6])

    def _table(self, period: float, length: int, frame: int) -> FrameTable:
        current = self._current
        if current is not None and current[0] == period:
            return current[1]  # no register written since it was looked up
        key = (self.format_key(), period)
        table = self._tables.get(key)
        if table is None:
            table = FrameTable(self.encode_table([self._values(i, period)
                                                  for i in range(length)]), frame, length)
            if len(self._tables) >= TABLES_KEPT:
                del self._tables[next(iter(self._tables))]
            self._tables[key] = table
        self._current = (period, table)
        return table

    def encode_table(self, values: list[tuple[Vector, Vector, float]]) -> bytes:
        """The frames of ``values`` back to back, as :meth:`fifo_frame` encodes them, with
        any counters ``fifo_frame`` keeps left as they were (the table is not the stream)."""
        counters = {k: v for k, v in vars(self).items() if isinstance(v, int | bool)}
        try:
            self.enter_steady_state()
            return b"".join(self.fifo_frame(*v) for v in values)
        finally:
            vars(self).update(counters)

    def enter_steady_state(self) -> None:
        """Set what :meth:`fifo_frame` counts down (start-up, bootstrap) to its steady
        state, for tabulating; :meth:`encode_table` restores it afterwards."""


def clamp_i16(value: float) -> int:
    return max(-32768, min(32767, round(value)))


def bus_error(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")
