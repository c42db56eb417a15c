"""edge-recorder: record I2C IMU sessions on a Raspberry Pi and deliver them over MQTT.

The Python API for recorded data (needs ``pip install 'edge-recorder[data]'``)::

    import edge_recorder
    df = edge_recorder.load_session("20261126T100000000Z-3f2a.mcap")
    sessions = edge_recorder.load_sessions("/srv/imu-store", labels=["login"])

Both are imported on first use, so the daemon never loads numpy or pandas.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_session", "load_sessions"]


def __getattr__(name: str) -> Any:
    if name in ("load_session", "load_sessions"):
        from edge_recorder.query import frames

        return getattr(frames, name)
    raise AttributeError(f"module 'edge_recorder' has no attribute {name!r}")
