"""The smbus2 adapter's transfer choices, with smbus2's own message objects.

No /dev/i2c here: the SMBus class is replaced by one that answers from a register image
(the way the kernel would fill the buffers), so what is checked is our use of smbus2 —
block reads up to 32 bytes, one i2c_rdwr (write register, repeated start, read) beyond,
split at the kernel's 8192-byte message limit.
"""

from __future__ import annotations

import ctypes

import pytest

from edge_recorder.sensors import smbus as adapter


class RegisterImageSMBus:
    def __init__(self, bus: int) -> None:
        self.bus = bus
        self.image = bytes(range(256)) * 64
        self.calls: list[tuple] = []
        self.closed = False

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        assert length <= 32, "SMBus block reads carry at most 32 bytes"
        self.calls.append(("block", address, register, length))
        return list(self.image[register:register + length])

    def i2c_rdwr(self, *messages) -> None:
        write, read = messages
        register = bytes(write)[0]
        self.calls.append(("rdwr", write.addr, register, read.len))
        data = self.image[register:register + read.len]
        ctypes.memmove(read.buf, data, len(data))

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        self.calls.append(("write", address, register, value))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def bus(monkeypatch):
    monkeypatch.setattr(adapter, "SMBus", RegisterImageSMBus)
    b = adapter.SMBusI2C(1)
    yield b
    b.close()


def test_short_reads_are_smbus_block_reads(bus):
    assert bus.read(0x68, 0x3B, 14) == bytes(range(0x3B, 0x3B + 14))
    assert bus._bus.calls == [("block", 0x68, 0x3B, 14)]


def test_fifo_bursts_are_one_write_read_transaction(bus):
    data = bus.read(0x68, 0x10, 700)
    assert data == (bytes(range(256)) * 64)[0x10:0x10 + 700]
    assert bus._bus.calls == [("rdwr", 0x68, 0x10, 700)]


def test_bursts_beyond_the_kernel_message_limit_are_split(bus):
    data = bus.read(0x68, 0, 9000)
    assert len(data) == 9000
    assert [c[3] for c in bus._bus.calls] == [8192, 808]


def test_writes_and_close(bus):
    raw = bus._bus
    bus.write(0x68, 0x6B, 0x180)  # masked to a byte
    assert raw.calls == [("write", 0x68, 0x6B, 0x80)]
    bus.close()
    bus.close()  # idempotent
    assert raw.closed
    with pytest.raises(OSError, match="closed"):
        bus.read(0x68, 0, 1)


def test_the_bus_clock_is_read_from_the_device_tree_when_present(tmp_path, monkeypatch):
    # Linux drivers/i2c/busses/i2c-bcm2835.c bcm2835_i2c_probe: of_property_read_u32(
    # of_node, "clock-frequency") is the bus clock (100000 when absent), and the adapter
    # gets adap->dev.of_node = that node, so sysfs shows it as i2c-N/of_node/clock-frequency
    # (the Pi's dtparam=i2c_arm_baudrate sets it); devicetree cells are big-endian u32
    # (Devicetree Specification §2.2.4).
    node = tmp_path / "i2c-1" / "of_node"
    node.mkdir(parents=True)
    (node / "clock-frequency").write_bytes((100_000).to_bytes(4, "big"))
    monkeypatch.setattr(adapter, "SYSFS_I2C_ADAPTERS", tmp_path)
    assert adapter.read_bus_clock_hz(1) == 100_000
    assert adapter.read_bus_clock_hz(2) is None  # not described: unknown, not guessed
