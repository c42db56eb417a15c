"""Session and journey identifiers: unique across devices, sortable by time, topic-safe."""

from __future__ import annotations

import secrets
import time


def _utc_stamp(t_ns: int, with_ms: bool) -> str:
    seconds, rest = divmod(t_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{stamp}{rest // 1_000_000:03d}Z" if with_ms else f"{stamp}Z"


def new_session_id(t_ns: int) -> str:
    """``20261126T100000123Z-3f9a1c07b2``: UTC start to the millisecond, 40 random bits."""
    return f"{_utc_stamp(t_ns, True)}-{secrets.token_hex(5)}"


def new_journey_id(device_id: str, t_ns: int) -> str:
    """An ``auto`` journey: the device and the daemon's start time."""
    return f"{device_id}-{_utc_stamp(t_ns, False)}-{secrets.token_hex(2)}"


def iso_utc(t_ns: int) -> str:
    """``2026-11-26T10:00:00.000000Z`` (docs/contract.md §5)."""
    seconds, rest = divmod(t_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"
