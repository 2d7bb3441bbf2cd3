"""The OpenAI-compatible video chat server; see tempura_jax/inference/serve.py.
The same command once installed: `tempura-serve`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.inference.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
