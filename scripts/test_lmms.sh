#!/usr/bin/env bash
# The lmms-eval job (after the main suite in .ci/run): its own venv .venv-lmms,
# because lmms-eval 0.7.3 moves pins of the main one (av, filelock, protobuf,
# fsspec); runs the tests that drive its CLI on the tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-lmms/bin/python ] || python3 -m venv .venv-lmms
.venv-lmms/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints/test.txt -e ".[test,lmms]" 2> >(grep -v "is ignored: it is neither" >&2)
# lmms-eval and timm require torchvision, but the registry's build does not load
# next to the CPU torch (torchvision::nms missing) and nothing here uses it.
.venv-lmms/bin/python -m pip uninstall -y -q torchvision 2>/dev/null || true
.venv-lmms/bin/python -m pytest -q tests/test_lmms_eval.py "$@"
