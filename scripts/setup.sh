#!/usr/bin/env bash
# Create .venv with edge-recorder and its test tools. Sourced by the other scripts.
# Installs Debian's python3-venv first if this Python cannot make a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    echo "setup: installing $* from Debian's packages" >&2
    as_root apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "setup: edge-recorder needs Python 3.11 or newer" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 11))
PY

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; "$PYTHON" -m venv .venv; }
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev${EXTRAS:+,$EXTRAS}]"
    rm -f .venv/.installed-* && touch "$stamp"
fi

need_mosquitto() {
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
}

need_openssl() {  # the TLS delivery test makes its CA and certificates with it
    command -v openssl >/dev/null || apt_install openssl || \
        echo "setup: could not install openssl; the TLS delivery test will skip" >&2
}

need_postgres() {
    [ -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || command -v initdb >/dev/null || \
        apt_install postgresql || echo "setup: could not install PostgreSQL; its tests will skip" >&2
}

need_chromium() {  # the console's browser tests: Debian's Chromium and its driver
    { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
        apt_install chromium chromium-driver || \
        echo "setup: could not install chromium; the console's browser tests will skip" >&2
}
