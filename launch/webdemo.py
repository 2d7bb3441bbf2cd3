"""The Gradio web demo with the event timeline; see tempura_jax/webdemo/app.py.
The same command once installed: `tempura-demo` (launch/demo.py is the
self-check, `tempura-selfcheck`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.webdemo.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
