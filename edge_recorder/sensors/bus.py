"""The narrow I2C bus protocol every driver talks to.

Real hardware goes through :mod:`edge_recorder.sensors.smbus` (the only module that
imports smbus2); tests and the demo go through :mod:`edge_recorder.sensors.emulation`.
Errors are ``OSError`` with the errno the kernel would give (EIO, EREMOTEIO).
"""

from __future__ import annotations

from typing import Protocol


class I2CBus(Protocol):
    """Register access on one I2C bus. Not thread-safe: the sampler owns one per bus."""

    def read(self, address: int, register: int, length: int) -> bytes:
        """Read ``length`` bytes starting at ``register`` in one transaction (repeated start)."""
        ...

    def write(self, address: int, register: int, value: int) -> None:
        """Write one byte to ``register``."""
        ...

    def close(self) -> None:
        """Release the bus; idempotent."""
        ...
