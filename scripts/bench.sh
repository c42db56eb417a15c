#!/usr/bin/env bash
# The benchmarks (see benchmarks/README.md): a table of figures against same-run baselines.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
need_mosquitto
command -v mosquitto_pub >/dev/null || apt_install mosquitto-clients
exec .venv/bin/python -m benchmarks.run "$@"
