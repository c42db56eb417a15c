"""A short chaos run (benchmarks/chaos.py): broker and collector SIGKILLed at random while a
session a second is recorded; every session must be stored exactly once, intact. The
long runs (30 kills, persistence on and off) are ``bash scripts/bench.sh --chaos 30``."""

from __future__ import annotations

import pytest

from benchmarks.chaos import run_chaos
from edge_recorder.devtools import find_mosquitto


@pytest.mark.slow
@pytest.mark.broker
def test_a_short_chaos_run_without_broker_persistence_loses_nothing(tmp_path):
    assert find_mosquitto() is not None
    # persistence off: every broker kill drops what it acknowledged and had not delivered
    result = run_chaos(tmp_path, broker_kills=5, collector_kills=1, daemon_kills=1,
                       seconds=35, persistence=False, seed=11, receipt_timeout_s=4,
                       settle_s=60)
    assert result.recorded >= 25
    assert (result.lost, result.duplicated, result.corrupt) == (0, 0, 0), result.lost_ids
    assert result.stored == result.recorded
    assert result.recovered_with_crash_gap == result.recovered
