"""Evaluate a checkpoint on a benchmark; see tempura_jax/cli/eval.py.
The same command once installed: `tempura-eval`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.cli.eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
