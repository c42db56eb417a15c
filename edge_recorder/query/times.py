"""Command-line time arguments for the session queries."""

from __future__ import annotations

import re
import time
from calendar import timegm

from edge_recorder.errors import UsageError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now_s: float | None = None) -> str:
    """``--since``/``--until`` → an ISO UTC string comparable with manifest times.

    Accepts ISO 8601 (``2026-11-26``, ``2026-11-26T10:00``, ``…Z``; times are UTC) or an
    age such as ``30m``, ``2h``, ``7d`` (that long ago).
    """
    now_s = time.time() if now_s is None else now_s
    m = _RELATIVE.match(text.strip())
    if m:
        t = now_s - float(m.group(1)) * _UNIT_S[m.group(2)]
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
            f".{int((t % 1) * 1e6):06d}Z"
    cleaned = text.strip().rstrip("Zz").replace(" ", "T")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            parsed = time.strptime(cleaned, fmt)
        except ValueError:
            continue
        frac = cleaned.split(".")[1] if "." in cleaned else "0"
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timegm(parsed))) + \
            f".{int(frac.ljust(6, '0')[:6]):06d}Z"
    raise UsageError(f"{text!r} is not a time: use ISO 8601 (2026-11-26T10:00:00Z) or an age "
                     "(30m, 2h, 7d)")
