#!/usr/bin/env bash
# The main command: set up, then run the end-to-end job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python launch/demo.py "$@"
