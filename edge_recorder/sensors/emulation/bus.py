"""An I2C bus with emulated chips on it: bus time, and what would cross the wire."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable

from edge_recorder.clock import monotonic_ns
from edge_recorder.sensors.emulation.chip import EmulatedChip, bus_error

START_STOP_BITS = 3  # start, repeated start, stop (approx.)
BITS_PER_BYTE = 9  # 8 data bits and the ACK
ADDRESS_PHASE_BYTES = 3  # address+W, register, address+R before a read's data
DEFAULT_BUS_HZ = 400_000  # fast mode (`dtparam=i2c_arm_baudrate=400000` on a Pi)
MAX_LEAD_NS = 1_000_000  # ``realtime``: a transfer further ahead of the clock than this waits


class EmulatedBus:
    """:class:`~edge_recorder.sensors.bus.I2CBus` over emulated chips.

    Bus time advances while bytes cross the wire at ``clock_hz`` (9 bit-times a byte,
    address and register bytes included): a transfer starts when the previous one ended
    (or now, if the bus was idle) and the chip sees each one at the moment its data phase
    starts, so data keeps arriving between a FIFO count read and the burst that follows.
    With ``realtime`` the caller is held until the transfer would have ended, as the
    i2c-dev ioctl holds it on hardware (only with a clock that runs at real speed);
    ``wait_until`` does the same for another clock (a test's fake clock moves forward).

    ``wire_bits`` counts the bit times of every transfer, for the benchmarks.
    ``error_rate`` makes that fraction of transactions fail with EIO.
    """

    def __init__(
        self,
        chips: dict[int, EmulatedChip] | None = None,
        *,
        clock: Callable[[], int] = monotonic_ns,
        error_rate: float = 0.0,
        seed: int = 1,
        clock_hz: int = DEFAULT_BUS_HZ,
        realtime: bool = False,
        wait_until: Callable[[int], None] | None = None,
    ) -> None:
        self.chips: dict[int, EmulatedChip] = dict(chips or {})
        self.clock = clock
        self.error_rate = error_rate
        self.rng = random.Random(seed)
        self.clock_hz = clock_hz
        self.wait_until = wait_until or (self._sleep_until if realtime else None)
        self.busy_until_ns = 0
        self.transactions = 0
        self.data_bytes = 0
        self.wire_bits = 0
        self.closed = False

    def attach(self, address: int, chip: EmulatedChip) -> None:
        self.chips[address] = chip

    def _begin(self, address: int) -> tuple[EmulatedChip, int]:
        """The chip at ``address`` and the bus time its transfer starts at."""
        if self.closed:
            raise OSError(errno.EBADF, "emulated bus is closed")
        chip = self.chips.get(address)
        start = max(self.clock(), self.busy_until_ns)
        hang = chip.faults.hang_from_ns if chip is not None else None
        if hang is not None and start >= hang:
            while not self.closed:  # a wedged bus: the ioctl never returns
                time.sleep(0.05)
            raise OSError(errno.EBADF, "emulated bus is closed")
        if chip is None or not chip.present(start):
            self._occupy(start, BITS_PER_BYTE + START_STOP_BITS)  # the address went out
            raise bus_error(errno.EREMOTEIO, f"no ACK from 0x{address:02x}")
        rate = self.error_rate + chip.faults.error_rate
        if rate and self.rng.random() < rate:
            raise bus_error(errno.EIO, f"bus fault talking to 0x{address:02x}")
        return chip, start

    def _bits_ns(self, bits: int) -> int:
        return bits * 1_000_000_000 // self.clock_hz

    def _occupy(self, start_ns: int, bits: int) -> None:
        self.transactions += 1
        self.wire_bits += bits
        self.busy_until_ns = start_ns + self._bits_ns(bits)
        if self.wait_until is not None:
            self.wait_until(self.busy_until_ns)

    def _sleep_until(self, t_ns: int) -> None:
        lead = t_ns - self.clock()
        if lead > MAX_LEAD_NS:  # shorter waits cost more in wake-ups than they model
            time.sleep(lead / 1e9)

    def read(self, address: int, register: int, length: int) -> bytes:
        chip, start = self._begin(address)
        # the data phase starts after START, address+W, register, repeated START, address+R
        data_at = start + self._bits_ns(2 + BITS_PER_BYTE * ADDRESS_PHASE_BYTES)
        data = chip.read(register, length, data_at)
        self.data_bytes += length
        self._occupy(start, BITS_PER_BYTE * (ADDRESS_PHASE_BYTES + length) + START_STOP_BITS)
        return data

    def write(self, address: int, register: int, value: int) -> None:
        chip, start = self._begin(address)
        bits = BITS_PER_BYTE * 3 + START_STOP_BITS - 1  # address+W, register, value
        chip.write(register, value, start + self._bits_ns(bits))
        self.data_bytes += 1
        self._occupy(start, bits)

    def close(self) -> None:
        self.closed = True
