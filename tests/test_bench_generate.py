"""bench/generate.py at the tiny size: both sides time batch 1 and 8 and, in
fp32, emit the same greedy tokens."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_generate_bench_tiny(tmp_path):
    pytest.importorskip("transformers")
    result = tmp_path / "g.json"
    subprocess.run(
        [sys.executable, "bench/generate.py", "--tiny", "--out", str(result)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},  # one CPU device
    )
    rec = json.loads(result.read_text())
    assert rec["dtype"] == "float32" and rec["new_tokens"] > 1
    rows = {r["batch"]: r for r in rec["results"]}
    assert sorted(rows) == [1, 8]
    for batch, row in rows.items():
        for side in ("jax", "torch"):
            for key in ("prefill_s", "prefill_tokens_per_s", "total_s", "decode_tokens_per_s"):
                value = row[side][key]
                assert value is not None and math.isfinite(value) and value > 0, (side, key)
        assert row["speedup"]["decode"] > 0 and row["speedup"]["prefill"] > 0
        match = row["greedy_tokens"]
        assert match["all_equal"] and match["min_prefix"] == rec["new_tokens"], match
        assert len(match["prefix_per_row"]) == batch
        # Varied outputs, so agreeing on them means something.
        assert min(match["distinct_per_row"]) > 4, match
    assert 8 * rows[8]["seq_len"] > rows[8]["prompt_tokens"]  # batch 8 carries left padding
