"""Write the offline demo data set; see tempura_jax/cli/make_demo_data.py.
The same command once installed: `tempura-make-demo-data`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.cli.make_demo_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
