#!/usr/bin/env bash
# The lmms-eval job (after the main suite in .ci/run), in a venv of its own
# because lmms-eval 0.7.3 moves pins of the main one (av, filelock, protobuf,
# fsspec); runs the tests that drive its CLI on the tiny model.
# The venv is built once per machine and pin set and kept outside the clone
# (TEMPURA_LMMS_VENV overrides where): later runs only re-link the project.
set -euo pipefail
cd "$(dirname "$0")/.."
key=$( (cat constraints/test.txt; grep -E '^(lmms|test) = |^  "' pyproject.toml) | sha256sum | cut -c1-12)
venv=${TEMPURA_LMMS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tempura-jax/venv-lmms-$key}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  -c constraints/test.txt -e ".[test,lmms]" 2> >(grep -v "is ignored: it is neither" >&2)
# lmms-eval and timm require torchvision, but the registry's build does not load
# next to the CPU torch (torchvision::nms missing) and nothing here uses it.
"$venv/bin/python" -m pip uninstall -y -q torchvision 2>/dev/null || true
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_lmms_eval.py "$@"
