"""An I2C bus with emulated chips on it, counting what would cross the wire."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable

from edge_recorder.sensors.emulation.chip import EmulatedChip, bus_error

START_STOP_BITS = 3  # start, repeated start, stop (approx.)


class EmulatedBus:
    """:class:`~edge_recorder.sensors.bus.I2CBus` over emulated chips.

    ``wire_bits`` counts the bit times the transfers would take on a real bus (9 per
    byte including ACK, address and register bytes included), for the benchmarks.
    ``error_rate`` makes that fraction of transactions fail with EIO.
    """

    def __init__(
        self,
        chips: dict[int, EmulatedChip] | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        error_rate: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.chips: dict[int, EmulatedChip] = dict(chips or {})
        self.clock = clock
        self.error_rate = error_rate
        self.rng = random.Random(seed)
        self.transactions = 0
        self.data_bytes = 0
        self.wire_bits = 0
        self.closed = False

    def attach(self, address: int, chip: EmulatedChip) -> None:
        self.chips[address] = chip

    def _chip(self, address: int) -> EmulatedChip:
        if self.closed:
            raise OSError(errno.EBADF, "emulated bus is closed")
        chip = self.chips.get(address)
        now = self.clock()
        hang = chip.faults.hang_from_ns if chip is not None else None
        if hang is not None and now >= hang:
            while not self.closed:  # a wedged bus: the ioctl never returns
                time.sleep(0.05)
            raise OSError(errno.EBADF, "emulated bus is closed")
        if chip is None or not chip.present(now):
            raise bus_error(errno.EREMOTEIO, f"no ACK from 0x{address:02x}")
        rate = self.error_rate + chip.faults.error_rate
        if rate and self.rng.random() < rate:
            raise bus_error(errno.EIO, f"bus fault talking to 0x{address:02x}")
        return chip

    def read(self, address: int, register: int, length: int) -> bytes:
        chip = self._chip(address)
        self.transactions += 1
        self.data_bytes += length
        self.wire_bits += 9 * (3 + length) + START_STOP_BITS
        return chip.read(register, length)

    def write(self, address: int, register: int, value: int) -> None:
        chip = self._chip(address)
        self.transactions += 1
        self.data_bytes += 1
        self.wire_bits += 9 * 3 + START_STOP_BITS - 1
        chip.write(register, value)

    def close(self) -> None:
        self.closed = True
