#!/usr/bin/env bash
# The demo: the daemon on config/demo.yaml (emulated MPU-6050, mock GPIO, a session
# every 20 s). Sessions land in demo-data/; with a broker on localhost:1883 they are
# published there, otherwise they wait on disk until one appears. Ctrl-C stops it.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
echo "demo: a 5 s session every 20 s into $(pwd)/demo-data; list them with:" >&2
echo "  .venv/bin/edge-recorder sessions list --store demo-data" >&2
if .venv/bin/python -c 'import socket; socket.create_connection(("localhost", 1883), 1).close()' \
        2>/dev/null; then
    echo "demo: a broker listens on localhost:1883: sessions are published there; collect them" >&2
    echo "  with: .venv/bin/edge-recorder collect --host localhost --store collected" >&2
else
    echo "demo: no broker on localhost:1883: sessions stay in demo-data/outbox/ until one" >&2
    echo "  runs (e.g. mosquitto -p 1883 -d; Debian's package: mosquitto); the daemon keeps" >&2
    echo "  trying to connect" >&2
fi
exec .venv/bin/edge-recorder run -c config/demo.yaml "$@"
