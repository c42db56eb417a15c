"""CSV export (SPEC §6): ``sensor,t_ns,ax,ay,az,gx,gy,gz[,temp_c]``, one row per sample."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from edge_recorder.sensors.base import CHANNELS
from edge_recorder.sessionfile import iter_batches

BASE_COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")


def load_samples(path: Path) -> dict[str, dict[str, list[Any]]]:
    """Every sample of a session file per sensor, columns sorted by ``t_ns``."""
    merged: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for sensor, batch in iter_batches(path):
        for key, values in batch.items():
            merged[sensor][key].extend(values)
    out: dict[str, dict[str, list[Any]]] = {}
    for sensor, cols in merged.items():
        order = sorted(range(len(cols["t_ns"])), key=cols["t_ns"].__getitem__)
        out[sensor] = {k: [v[i] for i in order] for k, v in cols.items()}
    return out


def write_csv(path: Path, out: IO[str]) -> int:
    """Write the session's samples as CSV; return the number of rows."""
    samples = load_samples(path)
    has_temp = any("temp_c" in cols for cols in samples.values())
    columns = [c for c in CHANNELS if c in BASE_COLUMNS or (c == "temp_c" and has_temp)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sensor", "t_ns", *columns])
    rows = 0
    for sensor in sorted(samples):
        cols = samples[sensor]
        n = len(cols["t_ns"])
        # float32 in the file: 7 significant digits say all it holds
        data = [[f"{v:.7g}" for v in cols[c]] if c in cols else [""] * n for c in columns]
        for i, t in enumerate(cols["t_ns"]):
            writer.writerow([sensor, t, *(d[i] for d in data)])
            rows += 1
    return rows
