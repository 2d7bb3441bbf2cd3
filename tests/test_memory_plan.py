"""The README's memory plan is exactly the rendering of the committed
compile reports (bench/results/compile_*.json): no row without a JSON file."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_memory_plan_is_rendered_from_the_committed_reports():
    out = subprocess.run(
        [sys.executable, "bench/memory_plan.py", "--check"], cwd=ROOT, capture_output=True
    )
    assert out.returncode == 0, "README table is stale: run python bench/memory_plan.py --write"
