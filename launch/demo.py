"""End-to-end offline check (convert, load, run, data); see tempura_jax/cli/selfcheck.py.
The same command once installed: `tempura-selfcheck`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.cli.selfcheck import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
