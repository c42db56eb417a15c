"""The throwaway PostgreSQL the fleet-scale tests run against is a real server."""

from __future__ import annotations

import subprocess


def test_postgres_fixture_is_a_real_server(postgres: str) -> None:
    out = subprocess.run(["psql", postgres, "-tAc", "select current_database(), version()"],
                         check=True, capture_output=True, text=True).stdout
    assert out.startswith(postgres.rsplit("/", 1)[1] + "|PostgreSQL ")
