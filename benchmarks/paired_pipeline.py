"""The pipeline's CPU per sample (section 1's replay method) for two or more checkouts,
alternating, so the host's drift falls on all of them alike.

    .venv/bin/python -m benchmarks.paired_pipeline ROUNDS FAMILY CHECKOUT [CHECKOUT ...]

e.g. ``... paired_pipeline 2 mpu6050 . /tmp/edge-recorder-4a48f02`` (a ``git worktree`` of
another commit). FAMILY: mpu6050, icm42688, lsm6dsox or lsm6ds3. Each measurement runs in
a fresh interpreter from the checkout's own tree: a 60 s session on the emulator, recorded,
then replayed three times without it; the least disturbed replay counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ONE = """
import sys, tempfile
from pathlib import Path
from edge_recorder.sensors.base import use_numpy
use_numpy(True)
import benchmarks.run as B
from edge_recorder.sensors.emulation import EmulatedLsm6ds3
drv, rate, cls = {"mpu6050": ("mpu6050", 1000.0, None), "icm42688": ("icm42688", 1000.0, None),
                  "lsm6dsox": ("lsm6dsox", 833.0, None),
                  "lsm6ds3": ("lsm6dsox", 833.0, EmulatedLsm6ds3)}[sys.argv[1]]
tmp = Path(tempfile.mkdtemp())
_, rig, reads = B.session_run(tmp / "live", drv, rate, 60.0, None, cls)
print(min(B.session_run(tmp / f"r{i}", drv, rate, 60.0, reads, cls)[0]
          / rig.channel.counters.samples * 1e6 for i in range(3)))
"""


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m benchmarks.paired_pipeline ROUNDS FAMILY CHECKOUT "
              "[CHECKOUT ...]", file=sys.stderr)
        return 2
    rounds, family = int(argv[0]), argv[1]
    checkouts = [Path(c).resolve() for c in argv[2:]]
    figures: dict[Path, list[float]] = {c: [] for c in checkouts}
    for r in range(rounds):
        for checkout in checkouts if r % 2 == 0 else checkouts[::-1]:
            out = subprocess.run([sys.executable, "-c", ONE, family], cwd=checkout,
                                 capture_output=True, text=True, check=True).stdout
            figures[checkout].append(float(out.split()[-1]))
            print(f"round {r} {checkout}: {family} {figures[checkout][-1]:.3f} µs per sample",
                  flush=True)
    for checkout, values in figures.items():
        print(f"{checkout}: {', '.join(f'{v:.3f}' for v in values)} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
