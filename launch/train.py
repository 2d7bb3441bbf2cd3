"""Train with the TEMPURA recipe (stage 1 or 2); see tempura_jax/cli/train.py.
The same command once installed: `tempura-train`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
