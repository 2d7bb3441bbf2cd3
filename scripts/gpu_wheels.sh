#!/usr/bin/env bash
# Wheels for GPU machines that have jax, flax, optax, orbax, transformers and
# torch (Python 3.12) but not the data pipeline's grain and av: downloaded
# here into .whl/ (gitignored; it travels with the tree), installed there by
# bench/gpu_check.sh. Versions are this checkout's venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pkgs=()
for dist in grain av array_record cloudpickle etils portpicker tokenizers tensorboardX; do
  pkgs+=("$dist==$(version "$dist")")
done
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl "${pkgs[@]}"
ls -la .whl
