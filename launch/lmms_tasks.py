"""Write an lmms-eval task folder for Charades-STA, QVHighlights and dense
captioning over local files (see tempura_jax/lmms/task_folder.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax.lmms.task_folder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
