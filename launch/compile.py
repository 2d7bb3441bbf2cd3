"""Compile the training step ahead of time for a TPU slice or GPU machine and
report memory, fit and FLOPs (see tempura_jax/aot/cli.py; `tempura-compile`).

    python launch/compile.py --config qwen2_5_vl_3b --stage 1 --topology v5e-8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.aot.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
