#!/usr/bin/env bash
# Set up a virtualenv (first run only) and start the node with embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hikariedge ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e .
fi
exec .venv/bin/hikariedge serve "$@"
