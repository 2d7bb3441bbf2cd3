#!/usr/bin/env bash
# The main command: set up, then train both TEMPURA stages on the embedded
# default (a tiny random Qwen2.5-VL and the synthetic stamped-video data set,
# both written locally under workdir/demo on the first run; CPU, minutes).
# Extra arguments are config overrides for both stages (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python launch/train.py --stage 1 "$@"
.venv/bin/python launch/train.py --stage 2 "$@"
