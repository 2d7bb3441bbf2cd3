#!/usr/bin/env bash
# The main command: set up, train both TEMPURA stages on the embedded default
# (a tiny random Qwen2.5-VL and the synthetic stamped-video data set, both
# written locally under workdir/demo on the first run; CPU, minutes), then
# evaluate the stage-2 model on the demo set's dense captions.
# Extra arguments are config overrides for both stages (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python launch/train.py --stage 1 "$@"
.venv/bin/python launch/train.py --stage 2 "$@"
.venv/bin/python launch/eval.py --task dvc --checkpoint workdir/demo/stage2/checkpoints \
    --annotations workdir/demo/data/stage2_dense.json --videos workdir/demo/data \
    --predictions workdir/demo/eval/dvc_predictions.jsonl --out workdir/demo/eval/dvc_metrics.json
