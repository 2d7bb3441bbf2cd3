"""The README's main command and the benchmarks keep working (tiny sizes)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*argv):
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def test_demo(tmp_path):
    out = run("launch/demo.py", "--workdir", str(tmp_path / "demo"), "--frames", "3")
    assert "round trip bit-exact: True" in out
    assert "temporal id of each frame: [3, 10, 17]" in out
    assert "all finite: True" in out


def test_convert_bench_tiny(tmp_path):
    result = tmp_path / "r.json"
    run(
        "bench/convert.py", "--size", "tiny", "--workdir", str(tmp_path / "w"), "--out", str(result)
    )
    r = json.loads(result.read_text())
    assert r["checkpoint_bytes"] > 0 and r["to_orbax"]["peak_rss_bytes"] > 0
    assert not (tmp_path / "w").exists()
