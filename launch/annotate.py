"""Build VER-style training data from raw videos with an OpenAI-compatible
model; see `tempura_jax/annotate/cli.py` (also installed as `tempura-annotate`).

    python launch/annotate.py --videos VIDEOS --out OUT --base-url URL --model NAME
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.annotate.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
