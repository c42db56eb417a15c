"""Adapter from :class:`~edge_recorder.sensors.bus.I2CBus` to Linux i2c-dev via smbus2.

The only module that imports smbus2. Reads of up to 32 bytes use the SMBus block read;
longer bursts (FIFO drains) use one ``i2c_rdwr`` ioctl with a write and a read message
joined by a repeated start, which is what keeps the wire busy with data, not addresses.
"""

from __future__ import annotations

from pathlib import Path

from smbus2 import SMBus, i2c_msg

SMBUS_BLOCK_MAX = 32
I2C_MSG_MAX = 8192  # kernel limit per i2c_msg
SYSFS_I2C_ADAPTERS = Path("/sys/class/i2c-adapter")


def read_bus_clock_hz(bus_number: int, adapters: Path | None = None) -> int | None:
    """The bus's configured SCL clock, or None where the system does not say.

    On a Raspberry Pi the device tree holds it (``dtparam=i2c_arm_baudrate``) as a
    big-endian u32 in ``i2c-N/of_node/clock-frequency``; the Pi's default is 100 kHz.
    """
    adapters = SYSFS_I2C_ADAPTERS if adapters is None else adapters
    try:
        raw = (adapters / f"i2c-{bus_number}" / "of_node" / "clock-frequency").read_bytes()
    except OSError:
        return None
    if len(raw) != 4:
        return None
    hz = int.from_bytes(raw, "big")
    return hz or None


class SMBusI2C:
    """``/dev/i2c-{bus_number}`` as an :class:`I2CBus`."""

    def __init__(self, bus_number: int) -> None:
        self.bus_number = bus_number
        self._bus: SMBus | None = SMBus(bus_number)
        self.clock_hz: int | None = read_bus_clock_hz(bus_number)
        """The SCL clock the system reports for this bus, if it does."""

    def _open(self) -> SMBus:
        if self._bus is None:
            raise OSError(f"/dev/i2c-{self.bus_number} is closed")
        return self._bus

    def read(self, address: int, register: int, length: int) -> bytes:
        bus = self._open()
        if length <= SMBUS_BLOCK_MAX:
            return bytes(bus.read_i2c_block_data(address, register, length))
        out = bytearray()
        while len(out) < length:
            n = min(I2C_MSG_MAX, length - len(out))
            write = i2c_msg.write(address, [register])
            read = i2c_msg.read(address, n)
            bus.i2c_rdwr(write, read)
            out += bytes(read)
        return bytes(out)

    def write(self, address: int, register: int, value: int) -> None:
        self._open().write_byte_data(address, register, value & 0xFF)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None
