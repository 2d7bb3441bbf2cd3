#!/usr/bin/env bash
# One command for one H100/H200 (at most 9 minutes): what the GPU runs still owe.
#   1. bench/attention.py, decoder at 8k and the 60-frame vision shapes: every
#      kernel (cudnn, pallas_gpu, auto) timed forward+backward on the device,
#      with its largest difference from the xla reference (out, dq, dk, dv):
#      the on-device kernel parity;
#   2. bench/train_step.py: the 3B step at TEMPURA's shapes, auto (and xla)
#      against transformers' torch step;
#   3. bench/generate.py: generation against transformers' generate.
# Results: bench/results/<bench>_<device>.json (the device named from jax).
# Missing grain/av are installed from .whl/ (scripts/gpu_wheels.sh prepares it).
#
#   bash bench/gpu_check.sh                  # on the GPU machine
#   bash bench/gpu_check.sh --cpu DIR        # the same steps on tiny shapes, CPU, into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=gpu
OUT=bench/results
if [ "${1:-}" = "--cpu" ]; then
  MODE=cpu
  OUT=${2:?--cpu needs an output directory}
  export JAX_PLATFORMS=cpu
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import grain, av" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-deps .whl/*.whl
  else
    echo "error: grain/av missing and no wheels in .whl/ (run scripts/gpu_wheels.sh)" >&2
    exit 1
  fi
fi

DEVICE=$("$PY" -c "import jax, re; print(re.sub(r'[^a-z0-9]+', '_', jax.devices()[0].device_kind.lower()).strip('_'))")
echo "gpu_check: $MODE on $DEVICE -> $OUT"
if [ "$MODE" = gpu ] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "error: no GPU visible to jax (use --cpu DIR for the CPU check)" >&2
  exit 1
fi

status=0
step() {  # step NAME SECONDS CMD...: run with a deadline, keep going on failure
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@"; then
    echo "gpu_check: $name ok ($((SECONDS - t0)) s)"
  else
    echo "gpu_check: $name FAILED or over ${limit} s (rc $?)" >&2
    status=1
  fi
}

if [ "$MODE" = gpu ]; then
  step attention 150 "$PY" bench/attention.py --lengths 8192 --iters 3 \
    --out "$OUT/attention_$DEVICE.json"
  step train_step 240 "$PY" bench/train_step.py --size 3b --steps 3 --warmup 1 \
    --attention auto,xla --timeout 110 --out "$OUT/train_step_3b_$DEVICE.json"
  step generate 130 "$PY" bench/generate.py --batch 1,8 --repeats 2 \
    --out "$OUT/generate_3b_$DEVICE.json"
else
  step attention 120 "$PY" bench/attention.py --tiny --iters 1 --only pallas_gpu \
    --out "$OUT/attention_$DEVICE.json"
  step train_step 180 "$PY" bench/train_step.py --size tiny --frames 2 --frame-hw 56,56 --batch 1 \
    --steps 1 --warmup 1 --no-torch --timeout 170 --out "$OUT/train_step_tiny_$DEVICE.json"
  step generate 120 "$PY" bench/generate.py --tiny --batch 1 --repeats 1 --new-tokens 2 \
    --skip-torch --out "$OUT/generate_tiny_$DEVICE.json"
fi
exit $status
