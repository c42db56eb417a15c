"""sd_notify in a few lines of stdlib: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Messages are single datagrams to ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux
abstract namespace). Without the variable (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

SEND_TIMEOUT_S = 0.5  # a full notify socket (nobody reading) must not stall the supervisor


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and owned else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(SEND_TIMEOUT_S)
            try:
                s.sendto("\n".join(fields).encode(), self.address)
            except OSError:
                pass  # systemd went away or is not reading; the supervisor must not wait

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self, monotonic_us: int) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_us}")
