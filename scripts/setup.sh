#!/usr/bin/env bash
# Create .venv (once) and install tempura-jax with its test extras.
# torch is pinned to the local CPU build by constraints/test.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints/test.txt -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
