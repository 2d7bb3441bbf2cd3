"""Benchmark tempura-convert on a Qwen2.5-VL-shaped checkpoint with random bf16 weights.

Builds the source checkpoint tensor by tensor (no download), sharded at 5 GB
like the hub's, then runs each direction in a child process and records its
wall time and peak RSS, next to the time of copying the same bytes.

    python bench/convert.py --size 3b      # ~7.5 GB on disk, several minutes
    python bench/convert.py --size tiny    # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tempura_jax import config as C  # noqa: E402
from tempura_jax.io.hf_checkpoint import HFCheckpoint  # noqa: E402
from tempura_jax.params import param_table  # noqa: E402
from tempura_jax.random_checkpoint import write_random_hf_checkpoint  # noqa: E402

SIZES = {"3b": C.qwen2_5_vl_3b, "tiny": C.tiny}


def timed_child(argv: list[str]) -> dict:
    """Run a child process; wall seconds and its peak RSS from wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed:\n{out}\n{err}")
    return {"wall_s": round(wall, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def copy_time(src: Path, dst: Path) -> float:
    dst.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for f in src.glob("*.safetensors"):
        shutil.copyfile(f, dst / f.name)
    return time.perf_counter() - start


def spot_check(a: Path, b: Path, names: list[str]) -> None:
    ca, cb = HFCheckpoint(a), HFCheckpoint(b)
    if ca.names() != cb.names():
        raise AssertionError("round trip changed the tensor names")
    for n in names:
        if ca.read(n).tobytes() != cb.read(n).tobytes():
            raise AssertionError(f"round trip changed {n}")


def run(size: str, workdir: Path, keep: bool) -> dict:
    cfg = SIZES[size]()
    shard = 5 * 10**9 if size == "3b" else 200_000
    if workdir.exists():
        shutil.rmtree(workdir)
    src, ckpt, back = workdir / "hf_src", workdir / "orbax", workdir / "hf_back"
    t0 = time.perf_counter()
    size_bytes = write_random_hf_checkpoint(cfg, src, dtype="bfloat16", max_shard_bytes=shard)
    gen_s = time.perf_counter() - t0
    copy_s = copy_time(src, workdir / "copy")
    shutil.rmtree(workdir / "copy")
    python = sys.executable
    baseline = timed_child([python, "-c", "import converters.convert"])
    to_orbax = timed_child([python, "-m", "converters", "to-orbax", str(src), str(ckpt)])
    to_hf = timed_child(
        [python, "-m", "converters", "to-hf", str(ckpt), str(back), "--max-shard-size", str(shard)]
    )
    specs = param_table(cfg)
    spot_check(src, back, [specs[0].hf_name, "model.embed_tokens.weight", specs[-1].hf_name])
    if not keep:
        shutil.rmtree(workdir)
    result = {
        "size": size,
        "checkpoint_bytes": size_bytes,
        "tensors": len(specs),
        "generate_source_s": round(gen_s, 2),
        "copy_same_bytes_s": round(copy_s, 2),
        "import_only": baseline,
        "to_orbax": to_orbax,
        "to_hf": to_hf,
    }
    for k in ("to_orbax", "to_hf"):
        d = result[k]
        d["rss_over_checkpoint"] = round(d["peak_rss_bytes"] / size_bytes, 3)
        d["time_over_copy"] = round(d["wall_s"] / max(copy_s, 1e-9), 2)
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tempura_bench_convert"))
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = p.parse_args()
    result = run(args.size, args.workdir, args.keep)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
