#!/usr/bin/env bash
# Run the test suite against a real Mosquitto and PostgreSQL, and the console's browser tests
# in a headless Chromium (each installed from Debian's packages if missing).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
need_mosquitto
need_openssl
need_chromium
need_postgres
exec .venv/bin/python -m pytest "$@"
