#!/usr/bin/env bash
# The demo: the daemon on config/demo.yaml (emulated MPU-6050, mock GPIO, a session
# every 20 s). Sessions land in demo-data/; with a broker on localhost:1883 they are
# published there, otherwise they wait on disk until one appears. Ctrl-C stops it.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
echo "demo: sessions go to $(pwd)/demo-data; list them with:" >&2
echo "  .venv/bin/edge-recorder sessions list --store demo-data" >&2
exec .venv/bin/edge-recorder run -c config/demo.yaml "$@"
