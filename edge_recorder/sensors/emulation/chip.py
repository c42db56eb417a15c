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
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_recorder.clock import monotonic_ns
from edge_recorder.sensors.emulation.motion import AtRest, Motion, Vector

ACCEL_NOISE_MPS2 = 0.02
GYRO_NOISE_RADS = 0.002


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
        self.fifo_true_ns: deque[int] = deque()  # true instant of each whole frame in the FIFO
        self.fifo_removed_bytes = 0
        self.delivered_true_ns: list[int] = []  # true instants of frames read out, in order
        self.samples_generated = 0
        self._start_ns: int | None = None
        self._next_k = 1
        self._was_absent = False
        self.resetting_until_ns = 0
        self.now_ns = 0  # bus time of the transfer being served
        self.sample_ns = 0
        self.power_on_reset()

    # --- what subclasses describe -------------------------------------------------
    def power_on_reset(self) -> None:
        """Put every register at its power-on value and empty the FIFO."""
        self.regs[:] = bytes(256)
        self.clear_fifo()
        self._start_ns = None

    def nominal_period_ns(self) -> float | None:
        """Sample period the registers select, or None while the chip does not sample."""
        raise NotImplementedError

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        """Encode one sample as the chip's FIFO frame (empty if the FIFO is off)."""
        raise NotImplementedError

    def update_data_registers(self, accel: Vector, gyro: Vector, temp_c: float) -> None:
        """Latch a sample into the output data registers."""

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
        absent = any(start <= now_ns < end for start, end in self.faults.absent)
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

    # --- FIFO and sampling ------------------------------------------------------------
    def clear_fifo(self) -> None:
        self.fifo.clear()
        self.fifo_true_ns.clear()
        self.fifo_removed_bytes = 0  # bytes taken from the head since the FIFO started

    def pop_fifo(self, length: int) -> bytes:
        data = bytes(self.fifo[:length])
        del self.fifo[:length]
        self.fifo_removed_bytes += len(data)
        frame = self.frame_size()
        if frame:
            whole = min(len(data) // frame, len(self.fifo_true_ns))
            for _ in range(whole):
                true_ns = self.fifo_true_ns.popleft()
                if self.record_truth:
                    self.delivered_true_ns.append(true_ns)
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
        frame = max(self.frame_size(), 1)
        keep = self.fifo_capacity_bytes // frame + 1
        if due > keep:  # a stalled reader: only the newest FIFO-full can survive anyway
            skipped = due - keep
            self._next_k += skipped
            self.samples_generated += skipped
            due = keep  # the writes below overwrite the oldest data exactly as the chip does
        for _ in range(due):
            self._sample(self._start_ns + int(self._next_k * period))
            self._next_k += 1

    def _sample(self, t_ns: int) -> None:
        accel, gyro = self.motion(t_ns / 1e9)
        temp_c = 25.0
        if self.noise:
            g = self.rng.gauss
            accel = (
                accel[0] + g(0, ACCEL_NOISE_MPS2),
                accel[1] + g(0, ACCEL_NOISE_MPS2),
                accel[2] + g(0, ACCEL_NOISE_MPS2),
            )
            gyro = (
                gyro[0] + g(0, GYRO_NOISE_RADS),
                gyro[1] + g(0, GYRO_NOISE_RADS),
                gyro[2] + g(0, GYRO_NOISE_RADS),
            )
            temp_c += g(0, 0.05)
        self.samples_generated += 1
        self.sample_ns = t_ns  # the instant being encoded, for chips whose data settles
        self.update_data_registers(accel, gyro, temp_c)
        frame = self.fifo_frame(accel, gyro, temp_c)
        if not frame:
            return
        self.fifo += frame
        self.fifo_true_ns.append(t_ns)
        excess = len(self.fifo) - self.fifo_capacity_bytes
        if excess > 0:  # the oldest data is overwritten, in the chip's own unit
            unit = self.overflow_unit_bytes
            excess = -(-excess // unit) * unit
            del self.fifo[:excess]
            self.fifo_removed_bytes += excess
            while len(self.fifo_true_ns) * len(frame) > len(self.fifo):
                self.fifo_true_ns.popleft()
            self.on_fifo_overflow()


def clamp_i16(value: float) -> int:
    return max(-32768, min(32767, round(value)))


def bus_error(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")
