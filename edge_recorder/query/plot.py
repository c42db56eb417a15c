"""``edge-recorder plot``: one PNG, a panel per sensor and quantity, labels in the title.

Needs matplotlib (``pip install 'edge-recorder[plot]'``); never needed on the device.
"""

from __future__ import annotations

from pathlib import Path

from edge_recorder.errors import UsageError
from edge_recorder.query.export import load_samples
from edge_recorder.sessionfile import read_manifest


def plot_session(path: Path, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("plot needs matplotlib: pip install 'edge-recorder[plot]'") from exc
    manifest = read_manifest(path)
    samples = load_samples(path)
    sensors = sorted(samples)
    fig, axes = plt.subplots(2 * max(1, len(sensors)), 1, figsize=(11, 3.2 * 2 * len(sensors)),
                             sharex=True, squeeze=False)
    for i, sensor in enumerate(sensors):
        cols = samples[sensor]
        t0 = cols["t_ns"][0] if cols["t_ns"] else 0
        t = [(x - t0) / 1e9 for x in cols["t_ns"]]
        for row, (keys, unit) in enumerate(((("ax", "ay", "az"), "m/s²"),
                                            (("gx", "gy", "gz"), "rad/s"))):
            ax = axes[2 * i + row][0]
            for key in keys:
                ax.plot(t, cols.get(key, []), label=key, linewidth=0.8)
            ax.set_ylabel(f"{sensor}\n{unit}")
            ax.legend(loc="upper right", fontsize="small")
            ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("time since first sample (s)")
    fig.suptitle(f"{manifest['session_id']} on {manifest.get('device_id')}\n"
                 f"labels: {', '.join(manifest.get('labels') or []) or '(none)'}   "
                 f"journey: {manifest.get('journey_id')}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
