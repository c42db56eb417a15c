"""What every IMU driver offers the sampler, and the capability tables the config checks.

A driver configures its chip, then hands over whatever the chip's FIFO holds: the bytes
of its whole, valid frames and the :class:`FrameLayout` that decodes them into SI units
(accelerations in m/s², angular rates in rad/s, temperature in °C) when they are wanted.
It does not timestamp: the sampler does, from the frame count and when the count was read
(:attr:`FifoRead.count_window_ns`, timed on the sampler's clock).
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from edge_recorder.errors import SensorError, SensorNotFound
from edge_recorder.sensors.bus import I2CBus

log = logging.getLogger(__name__)

STANDARD_GRAVITY_MPS2 = 9.80665
DEG_TO_RAD = math.pi / 180.0
CHANNELS: tuple[str, ...] = ("ax", "ay", "az", "gx", "gy", "gz", "temp_c")
"""Column order of every sample block; ``temp_c`` only where the chip batches temperature."""


class Channel(NamedTuple):
    """Where one channel sits in a frame and how its raw value becomes SI:
    ``value = raw * scale + offset``, NaN where the chip wrote ``nan_raw``."""

    field: int  # position among the frame's unpacked fields
    scale: float
    offset: float = 0.0
    nan_raw: int | None = None


class FrameLayout:
    """How a driver's FIFO frames decode into :data:`CHANNELS`.

    Drivers hand the sampler the bytes their FIFO gave (checked, with bad frames cut out)
    and this layout; nothing is decoded per sample while reading. The values are decoded
    when something wants them, in whole batches: a session writing its file, the self-test.
    With no session open, a sample costs a slice of ``bytes`` and nothing more.
    ``fields`` is one frame's :mod:`struct` format, byte order first (``">7h"``);
    ``channels`` has one :class:`Channel` per entry of :data:`CHANNELS` the chip delivers.
    Layouts are equal when they decode alike, so consecutive reads can be joined.
    """

    __slots__ = ("fields", "channels", "frame_bytes", "_per_frame", "_structs", "_dtype")

    def __init__(self, fields: str, channels: tuple[Channel, ...]) -> None:
        self.fields = fields
        self.channels = channels
        one = struct.Struct(fields)
        self.frame_bytes = one.size
        self._per_frame = len(one.unpack(bytes(one.size)))
        self._structs: dict[int, struct.Struct] = {}
        self._dtype: Any = None  # numpy's view of a frame, made on first use

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameLayout) and (self.fields, self.channels) == \
            (other.fields, other.channels)

    def __hash__(self) -> int:
        return hash((self.fields, self.channels))

    def __repr__(self) -> str:
        return f"FrameLayout({self.fields!r}, {self.channels!r})"

    def _struct(self, frames: int) -> struct.Struct:
        """All ``frames`` frames in one unpack (cached: reads come in a few sizes)."""
        found = self._structs.get(frames)
        if found is None:
            if len(self._structs) >= MAX_CACHED_STRUCTS:
                self._structs.clear()
            order, one = self.fields[0], self.fields[1:]
            found = self._structs[frames] = struct.Struct(order + one * frames)
        return found

    def decode(self, raw: bytes) -> tuple[array[float], ...]:
        """Whole frames of ``raw`` as float32 columns in SI units, :data:`CHANNELS` order.

        With numpy in use (:func:`use_numpy`) about 13 times faster per sample; the result
        is the same to the bit (both compute ``raw * scale + offset`` in double precision,
        then round to float32)."""
        if _numpy is not None:
            return self.decode_numpy(raw)
        return self.decode_python(raw)

    def decode_python(self, raw: bytes) -> tuple[array[float], ...]:
        """:meth:`decode` in plain Python: one list comprehension per channel."""
        frames = len(raw) // self.frame_bytes if self.frame_bytes else 0
        flat = self._struct(frames).unpack_from(raw) if frames else ()
        k = self._per_frame
        out = []
        for field, scale, offset, nan_raw in self.channels:
            raw_values = flat[field::k]
            if nan_raw is not None and nan_raw in raw_values:
                values = [math.nan if v == nan_raw else v * scale + offset for v in raw_values]
            elif offset:
                values = [v * scale + offset for v in raw_values]
            else:
                values = [v * scale for v in raw_values]
            out.append(array("f", values))
        return tuple(out)

    def decode_numpy(self, raw: bytes) -> tuple[array[float], ...]:
        """:meth:`decode` with numpy: a few array operations per channel, whatever the
        number of frames."""
        np = _numpy or _import_numpy()
        if self._dtype is None:
            self._dtype = self._numpy_dtype(np)
        frames = len(raw) // self.frame_bytes if self.frame_bytes else 0
        table = np.frombuffer(raw, self._dtype, frames)
        out = []
        for field, scale, offset, nan_raw in self.channels:
            ints = table[f"f{field}"]
            values = ints * scale  # float64, as Python's
            if offset:
                values += offset
            if nan_raw is not None:
                values[ints == nan_raw] = np.nan
            column = array("f")
            column.frombytes(values.astype(np.float32).tobytes())
            out.append(column)
        return tuple(out)

    def _numpy_dtype(self, np: Any) -> Any:
        """A structured dtype whose fields ``f0``, ``f1``… are the frame's unpacked fields."""
        order, at = self.fields[0], 0
        names: list[str] = []
        formats: list[str] = []
        offsets: list[int] = []
        for count, code in re.findall(r"(\d*)([xbBhH])", self.fields[1:]):
            for _ in range(int(count or 1)):
                if code != "x":
                    names.append(f"f{len(names)}")
                    formats.append(order + NUMPY_CODES[code])
                    offsets.append(at)
                at += struct.calcsize(code)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": at})


NUMPY_CODES = {"b": "i1", "B": "u1", "h": "i2", "H": "u2"}  # struct code → numpy type
_numpy: Any = None  # the numpy module while use_numpy(True) is in effect


def _import_numpy() -> Any:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no idle BLAS threads in the daemon
    import numpy

    return numpy


def numpy_in_use() -> Any:
    """The numpy module while :func:`use_numpy` is in effect, else None."""
    return _numpy


def use_numpy(enabled: bool = True) -> bool:
    """Decode with numpy where it is installed (the ``fast`` extra); returns whether it is
    now in use. The daemon calls this at start-up, so numpy's import (about 0.5 s of CPU on
    a Pi Zero 2) is paid before sampling starts, not in the middle of the first session."""
    global _numpy
    if not enabled:
        _numpy = None
        return False
    try:
        _numpy = _import_numpy()
    except ImportError:
        _numpy = None  # not installed: plain Python, the same bits
    except Exception as exc:  # installed but broken (a wheel for another CPU, say)
        log.warning("numpy is installed but does not import (%s); samples are decoded in "
                    "plain Python", f"{type(exc).__name__}: {exc}")
        _numpy = None
    return _numpy is not None


MAX_CACHED_STRUCTS = 256

ASSUMED_BUS_HZ = 400_000  # where the bus does not say (config.ASSUMED_BUS_HZ)
# A register read returns the chip's registers as they are when its first data byte is
# clocked out: after START, address+W, register, repeated START and address+R (9 bit-times
# a byte), ~70 µs after the transfer began at 400 kHz, ~280 µs at 100 kHz. Then its data
# bytes follow, 9 bit-times each.
COUNT_LATCH_BITS = 2 + 9 * 3
BITS_PER_DATA_BYTE = 9


class FifoRead(NamedTuple):
    """One drain of a chip's FIFO.

    ``raw`` holds ``frames`` whole frames in ``layout`` (frames the driver discarded are
    already cut out); :attr:`columns` decodes them. ``overflowed`` means the chip lost data
    before this read; the driver has already reset its FIFO, and the sampler estimates
    and records how many frames were lost.
    """

    raw: bytes
    layout: FrameLayout
    frames: int
    overflowed: bool = False
    lost_frames: int = 0  # frames the driver knows it discarded (misaligned, incomplete)
    count_window_ns: tuple[int, int] | None = None
    """When the chip latched the count these frames were read by: at the earliest and the
    latest, on the driver's :attr:`~ImuDriver.clock` (see :meth:`ImuDriver.read_count`).
    The newest frame was sampled within one period before that instant. None: no count
    was read."""
    restart_window_ns: tuple[int, int] | None = None
    """With ``overflowed``: when the driver's reset let the FIFO store again (the clock
    before and after that write, :meth:`ImuDriver.write_restarting`); what the chip sampled
    before is lost, what it sampled after is in the FIFO."""

    @property
    def columns(self) -> tuple[array[float], ...]:
        """The frames decoded: one float32 column per channel, ``frames`` long."""
        return self.layout.decode(self.raw)


class ImuDriver(ABC):
    """Base class of the chip drivers: capability tables plus ``start`` and ``read_fifo``."""

    name: ClassVar[str]
    default_address: ClassVar[int]
    addresses: ClassVar[tuple[int, ...]]
    who_am_i_register: ClassVar[int]
    chip_ids: ClassVar[dict[int, str]]
    rates_hz: ClassVar[tuple[float, ...]]
    accel_ranges_g: ClassVar[tuple[int, ...]]
    gyro_ranges_dps: ClassVar[tuple[int, ...]]
    fifo_bytes_by_variant: ClassVar[dict[str, int]]
    """FIFO size of each variant (chip_ids' values), bytes; until identified, the smallest."""
    frame_bytes: ClassVar[int]
    has_temperature: ClassVar[bool] = True
    default_rate_hz: ClassVar[float] = 200
    default_accel_range_g: ClassVar[int] = 4
    default_gyro_range_dps: ClassVar[int] = 500

    def __init__(
        self,
        bus: I2CBus,
        address: int,
        *,
        rate_hz: float,
        accel_range_g: int,
        gyro_range_dps: int,
        bus_name: str = "?",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bus = bus
        self.address = address
        self.rate_hz = rate_hz
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.bus_name = bus_name
        self.sleep = sleep
        self.variant = ""
        self.layout = FrameLayout("<", ())  # set by configure(), once the scales are known
        self._written: dict[int, int] = {}
        # The clock the count's transfer is timed on: the sampler's (it sets this), as its
        # frames are stamped on it.
        self.clock: Callable[[], int] = time.monotonic_ns
        self.restart_window_ns: tuple[int, int] | None = None  # see write_restarting
        bit_ns = 1e9 / (getattr(bus, "clock_hz", None) or ASSUMED_BUS_HZ)
        self._latch_ns = round(COUNT_LATCH_BITS * bit_ns)
        self._data_byte_ns = round(BITS_PER_DATA_BYTE * bit_ns)

    @property
    def fifo_bytes(self) -> int:
        """The identified variant's FIFO size; before identification the family's smallest."""
        sizes = self.fifo_bytes_by_variant
        return sizes[self.variant] if self.variant in sizes else min(sizes.values())

    @property
    def fifo_frames(self) -> int:
        """How many frames the FIFO holds before it overflows."""
        return self.fifo_bytes // self.frame_bytes

    # --- configuration that is read back --------------------------------------------
    def write_config(self, register: int, value: int) -> None:
        """Write a configuration register and remember it for :meth:`verify_config`."""
        self.bus.write(self.address, register, value)
        self._written[register] = value

    def verify_config(self) -> None:
        """Read every configuration register back: a write lost on the wire (a glitch, a
        brown-out) would otherwise leave the chip asleep or misconfigured, silently."""
        for register, value in self._written.items():
            actual = self.bus.read(self.address, register, 1)[0]
            if actual != value:
                raise SensorError(
                    f"{self.name} on I2C bus {self.bus_name} at 0x{self.address:02x}: register "
                    f"0x{register:02x} reads back 0x{actual:02x}, 0x{value:02x} was written; "
                    "check the wiring and the power supply")

    def identify(self) -> str:
        """Read WHO_AM_I; return the chip variant or raise :class:`SensorNotFound`."""
        try:
            value = self.bus.read(self.address, self.who_am_i_register, 1)[0]
        except OSError as exc:
            raise SensorNotFound(
                f"no {self.name} answered on I2C bus {self.bus_name} at address "
                f"0x{self.address:02x} ({exc}); check your wiring and the address"
            ) from exc
        variant = self.chip_ids.get(value)
        if variant is None:
            expected = ", ".join(f"0x{k:02x} ({v})" for k, v in self.chip_ids.items())
            raise SensorNotFound(
                f"the chip on I2C bus {self.bus_name} at 0x{self.address:02x} says WHO_AM_I="
                f"0x{value:02x}, expected {expected} for driver {self.name}; "
                "check your wiring and the driver name"
            )
        self.variant = variant
        return variant

    def start(self) -> None:
        """Identify, reset and configure the chip, and start its FIFO."""
        self.identify()
        self._written = {}
        self.configure()

    @abstractmethod
    def configure(self) -> None:
        """Reset the chip, set rate and ranges, and start the FIFO empty."""

    @abstractmethod
    def reset_fifo(self) -> None:
        """Empty the FIFO and restart it: what it held is lost (the sampler counts it)."""

    @abstractmethod
    def read_fifo(self) -> FifoRead:
        """Drain every complete frame the FIFO holds, in as few transfers as possible."""

    def read_count(self, register: int, length: int) -> tuple[bytes, tuple[int, int]]:
        """Read the registers that hold the FIFO's count (from ``register`` on), timed: the
        bytes, and when the chip latched them, between the earliest and the latest instant
        the clock allows (:attr:`FifoRead.count_window_ns`). On the wire alone the two are
        the same instant: the clock read before the transfer plus the bits before its first
        data byte, the clock read after it less the data bytes. A thread stopped before or
        during the transfer (a CPU quota, a task of higher priority) widens the window, and
        the count says no more than that: the frames it counts may have been sampled while
        the thread was stopped."""
        clock = self.clock
        before = clock()
        data = self.bus.read(self.address, register, length)
        after = clock()
        earliest = before + self._latch_ns
        latest = after - length * self._data_byte_ns
        return data, (earliest, latest if latest > earliest else earliest)

    def write_restarting(self, register: int, value: int) -> None:
        """The write of :meth:`reset_fifo` after which the FIFO stores samples again, timed:
        :attr:`restart_window_ns`. A stop before it (a CPU quota) loses what the chip samples
        meanwhile; a stop after it leaves that in the FIFO. Either way the sampler knows
        which, from when this write ran."""
        clock = self.clock
        before = clock()
        self.bus.write(self.address, register, value)
        self.restart_window_ns = (before, clock())

    def nothing(self, overflowed: bool = False) -> FifoRead:
        """A read that found no whole frame, or found the FIFO overflowed (and reset it:
        when it restarted goes with it, :meth:`restart_window`)."""
        return FifoRead(b"", self.layout, 0, overflowed,
                        restart_window_ns=self.restart_window() if overflowed else None)

    def restart_window(self) -> tuple[int, int] | None:
        """When the last :meth:`reset_fifo` let the FIFO store again: from just before its
        restarting write (:meth:`write_restarting`) until now, its return. What the reset
        read after that write (a stale flag cleared) belongs in the window: a FIFO that
        filled up again meanwhile had its new overflow's flag cleared with the stale one."""
        window = self.restart_window_ns
        return None if window is None else (window[0], max(window[1], self.clock()))
