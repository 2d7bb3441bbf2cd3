"""bench/gpu_check.sh's CPU path: the same script and benchmarks on tiny
shapes (the GPU run needs an H100/H200)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as on the GPU machine
    out = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--cpu", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for step in ("attention", "train_step", "generate"):
        assert f"gpu_check: {step} ok" in out.stdout
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["attention_cpu.json", "generate_tiny_cpu.json", "train_step_tiny_cpu.json"]
    for name in names:
        assert json.loads((tmp_path / name).read_text())
