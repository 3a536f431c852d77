#!/usr/bin/env bash
# Set up a virtualenv with the test extras and run the whole suite.
# Everything comes from PyPI: the ffmpeg used as publisher/receiver ships in imageio-ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
