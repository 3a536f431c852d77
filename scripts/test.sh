#!/usr/bin/env bash
# Set up a virtualenv with the test extras and run the whole suite.
# Everything comes from PyPI: the ffmpeg used as publisher/receiver ships in imageio-ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
# The browser tests drive Debian's Chromium through Playwright (never Playwright's own browser
# download). Install it where it is missing and we may; without it those tests skip.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests (apt-get) ..." >&2
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
    || echo "chromium could not be installed: the browser tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
