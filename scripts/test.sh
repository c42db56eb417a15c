#!/usr/bin/env bash
# Run the test suite against a real Mosquitto and PostgreSQL (installed from Debian's packages
# if missing).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
need_mosquitto
need_postgres
exec .venv/bin/python -m pytest "$@"
