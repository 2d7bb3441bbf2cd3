#!/usr/bin/env bash
# The reference path for bench/data_pipeline.py: qwen-vl-utils (decord reader)
# + transformers' Qwen2VL processor, on CPU torch, in its own venv.
#   bash bench/reference_env/setup.sh [VENV]   (default /work/refenv)
# PyPI's torchvision is built against CUDA torch; the tv_cpu_shim files let
# its pure-torch parts (the resize qwen-vl-utils uses) import under CPU torch.
# torchcodec must NOT be installed: qwen-vl-utils would pick it first and its
# wheel needs CUDA's libnvrtc.
set -euo pipefail
VENV=${1:-/work/refenv}
HERE=$(cd "$(dirname "$0")" && pwd)
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
"$VENV/bin/pip" install -q transformers==4.57.6 pillow numpy av qwen-vl-utils==0.0.14
"$VENV/bin/pip" install -q --no-deps torchvision==0.28.0 decord==0.6.0
"$VENV/bin/pip" uninstall -q -y torchcodec 2>/dev/null || true
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$HERE"/tv_cpu_shim.py "$HERE"/tv_cpu_shim_hook.py "$HERE"/tv_cpu_shim.pth "$SITE"/
"$VENV/bin/python" -c "import qwen_vl_utils, decord; print('reference env ready:', '$VENV')"
