"""Ask a checkpoint about videos; see tempura_jax/cli/infer.py.
The same command once installed: `tempura-infer`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.cli.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
