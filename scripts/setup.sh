#!/usr/bin/env bash
# Create .venv (once) and install tempura-jax with its test extras.
# torch is pinned to the local CPU build by constraints/test.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints/test.txt -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
# Headless Chromium for the web demo's browser test (Debian packages, ~3 min, ~300 MB).
command -v chromium > /dev/null && command -v chromedriver > /dev/null || {
  command -v apt-get > /dev/null && [ "$(id -u)" = 0 ] &&
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
} || echo "chromium not installed: tests/test_webdemo.py will be skipped" >&2
