"""``edge-recorder plot``: one image, panels per sensor (acceleration, rate, temperature).

Needs matplotlib (``pip install 'edge-recorder[plot]'``); never needed on the device.
Long sessions are decimated as they are read: each sensor's time span is cut into at
most :data:`MAX_BINS` bins and each bin keeps the minimum and maximum of every channel
(drawn as an envelope), so memory does not grow with the session and no spike is lost.
Gaps from the manifest are shaded, the trigger instant (``pre_trigger_s`` after the start)
is marked, and the x axis counts seconds from the absolute start time in the title.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_recorder.errors import UsageError
from edge_recorder.query.export import Progress, SampleCounter
from edge_recorder.sessionfile import SessionFile

MAX_BINS = 2000  # about one per horizontal pixel at the figure's width
BATCH_SAMPLES = 65_536  # samples decoded at a time before binning
PANELS = ((("ax", "ay", "az"), "m/s²"), (("gx", "gy", "gz"), "rad/s"), (("temp_c",), "°C"))


def _iso_ns(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


class Envelope:
    """Per-bin minimum and maximum of each channel over ``[t0_ns, t1_ns)``."""

    def __init__(self, t0_ns: int, t1_ns: int, bins: int, channels: list[str]) -> None:
        import numpy as np

        self.t0_ns, self.span_ns, self.bins = t0_ns, max(1, t1_ns - t0_ns), bins
        self.lo = {c: np.full(bins, np.inf) for c in channels}
        self.hi = {c: np.full(bins, -np.inf) for c in channels}

    def add(self, cols: dict[str, Any]) -> None:
        import numpy as np

        t = cols["t_ns"]
        if not len(t):
            return
        index = ((t - self.t0_ns) * self.bins // self.span_ns).clip(0, self.bins - 1)
        for c in self.lo:
            if c in cols:
                np.minimum.at(self.lo[c], index, cols[c])
                np.maximum.at(self.hi[c], index, cols[c])

    def series(self, channel: str) -> tuple[Any, Any, Any]:
        """Bin centres (s from t0) and min/max, NaN where a bin holds no sample."""
        import numpy as np

        lo, hi = self.lo[channel].copy(), self.hi[channel].copy()
        empty = ~np.isfinite(lo)
        lo[empty] = np.nan
        hi[empty] = np.nan
        x = (np.arange(self.bins) + 0.5) * self.span_ns / self.bins / 1e9
        return x, lo, hi


@dataclass(frozen=True)
class PlotSummary:
    """What the picture shows, for the CLI's message and for tests."""

    bins: dict[str, int]  # per sensor: points drawn per channel (memory is this, not length)
    gaps_shaded: int
    trigger_s: float | None  # where the trigger line is, s after the start; None: no line


def plot_session(path: Path, out: Path, *, progress: Progress | None = None) -> PlotSummary:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("plot needs matplotlib: pip install 'edge-recorder[plot]'") from exc
    from edge_recorder.query.arrays import SensorBuffers

    session = SessionFile(path)
    manifest = session.manifest
    temps = session.has_temperature()
    sensors = sorted(temps)
    first_ns, last_msg_ns = session.message_span_ns()
    start_ns = _iso_ns(manifest.get("started_at")) or first_ns
    stop_ns = _iso_ns(manifest.get("stopped_at")) or last_msg_ns
    stop_ns = max(stop_ns, last_msg_ns + 1, start_ns + 1)
    counts = {s.get("name"): int(s.get("samples") or 0)
              for s in manifest.get("sensors") or [] if isinstance(s, dict)}
    counter = SampleCounter(session, progress)
    envelopes: dict[str, Envelope] = {}
    for sensor in sensors:
        channels = [c for keys, _u in PANELS for c in keys if c != "temp_c" or temps[sensor]]
        bins = max(1, min(MAX_BINS, counts.get(sensor, 0) // 2 or MAX_BINS))
        env = envelopes[sensor] = Envelope(start_ns, stop_ns, bins, channels)
        buffers, pending = SensorBuffers(), 0
        for _name, data in session.messages(sensor):
            buffers.add(data)
            pending += (len(data) - 40) // 36  # about the samples in one message
            if pending >= BATCH_SAMPLES:
                cols = buffers.arrays()
                env.add(cols)
                counter.add(len(cols["t_ns"]))
                buffers, pending = SensorBuffers(), 0
        cols = buffers.arrays()
        env.add(cols)
        counter.add(len(cols["t_ns"]))

    rows = [(sensor, keys, unit) for sensor in sensors for keys, unit in PANELS
            if keys != ("temp_c",) or temps[sensor]]
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(11, 2.6 * max(1, len(rows))),
                             sharex=True, squeeze=False)
    trigger_s = manifest.get("pre_trigger_s")
    gaps = {s.get("name"): s.get("gaps") or [] for s in manifest.get("sensors") or []
            if isinstance(s, dict)}
    shaded = 0
    marked = isinstance(trigger_s, (int, float)) and trigger_s > 0
    for ax, (sensor, keys, unit) in zip(axes[:, 0], rows, strict=False):
        env = envelopes[sensor]
        for key in keys:
            x, lo, hi = env.series(key)
            line = ax.plot(x, (lo + hi) / 2, linewidth=0.7, label=key)[0]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.3, linewidth=0)
        for i, gap in enumerate(gaps.get(sensor, [])):
            try:
                g0 = (int(gap["start_ns"]) - start_ns) / 1e9
                g1 = (int(gap["end_ns"]) - start_ns) / 1e9
            except (KeyError, TypeError, ValueError):
                continue
            ax.axvspan(g0, g1, color="red", alpha=0.15,
                       label=f"gap ({gap.get('lost')} lost)" if i == 0 else None)
            shaded += keys == PANELS[0][0]  # count each gap once, on its first panel
        if marked:
            ax.axvline(trigger_s, color="black", linestyle="--", linewidth=0.9,
                       label="trigger")
        ax.set_ylabel(f"{sensor}\n{unit}")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel(f"seconds since {manifest.get('started_at') or 'the first sample'}"
                           " (UTC)")
    labels = manifest.get("labels")
    labels = labels if isinstance(labels, list) else []
    fig.suptitle(f"{manifest.get('session_id')} on {manifest.get('device_id')}, started "
                 f"{manifest.get('started_at')}\n"
                 f"labels: {', '.join(map(str, labels)) or '(none)'}   "
                 f"journey: {manifest.get('journey_id')}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return PlotSummary({s: e.bins for s, e in envelopes.items()}, shaded,
                       float(trigger_s) if marked and trigger_s is not None else None)
