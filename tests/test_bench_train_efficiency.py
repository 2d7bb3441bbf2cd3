"""bench/train_efficiency.py on a small synthetic set: buckets give several
step shapes, packing one; slots add up."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_efficiency_bench_small(tmp_path):
    spec = importlib.util.spec_from_file_location("te", REPO / "bench" / "train_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "e.json"
    args = ["--records", "600", "--devices", "1", "--epochs", "2", "--median-seconds", "30"]
    assert (
        bench.main([*args, "--pack", "8192/0/2,16384/auto/1,8192/auto/2/200", "--out", str(out)])
        == 0
    )
    r = json.loads(out.read_text())["by_devices"]["1"]
    assert max(r["buckets"]["shapes_per_epoch"]) > 1
    assert 0 < r["buckets"]["padding_tokens"] < 1
    for p in r["packed"]:
        assert p["shapes_per_epoch"] == [1, 1] and p["samples_per_row"][0] > 1
        assert 0 <= p["padding_tokens"] < r["buckets"]["padding_tokens"]
        assert 0 <= p["padding_patches"] < 1
        reached = [p["padding_tokens"], p["padding_patches"]]
        assert all(0 <= b <= x + 1e-9 for b, x in zip(p["padding_bound"], reached, strict=True))
    assert r["packed"][1]["step_shape"][1:] == [16384, r["packed"][1]["step_shape"][2]]
    flops = json.loads(out.read_text())["step_flops"]  # the committed 3B compiles
    cpu = flops["step_flops_3b.json"]["60_frames"]
    assert cpu["dense"] > 2 > cpu["block_local_run"] > 1
    assert flops["tpu_flops_3b_v5p-8_xla.json"]["60_frames"]["block_local_run"] > 1
    packed = flops["packed_flops_3b.json"]
    assert packed["packed_dense"] > packed["packed_text_bound"] > packed["unpacked"] > 1
