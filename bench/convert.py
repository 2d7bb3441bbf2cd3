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


def peak_rss_bytes() -> int:
    """VmHWM of this address space. (ru_maxrss of a child would include the
    high-water mark inherited from the parent at fork.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(argv: list[str]) -> None:
    """Run one conversion (or nothing, for the import baseline) and report its peak RSS."""
    from converters.cli import main as convert

    if argv and convert(argv) != 0:
        raise SystemExit(1)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


def timed_child(argv: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv], cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), **report}


def copy_time(src: Path, dst: Path) -> float:
    dst.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for f in src.glob("*.safetensors"):
        shutil.copyfile(f, dst / f.name)
    return time.perf_counter() - start


def check_exact(a: Path, b: Path) -> None:
    ca, cb = HFCheckpoint(a), HFCheckpoint(b)
    if ca.names() != cb.names():
        raise AssertionError("round trip changed the tensor names")
    for n in sorted(ca.names()):
        x, y = ca.read(n), cb.read(n)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
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
    baseline = timed_child([])
    to_orbax = timed_child(["to-orbax", str(src), str(ckpt)])
    to_hf = timed_child(["to-hf", str(ckpt), str(back), "--max-shard-size", str(shard)])
    check_exact(src, back)
    specs = param_table(cfg)
    if not keep:
        shutil.rmtree(workdir)
    result = {
        "size": size,
        "checkpoint_bytes": size_bytes,
        "tensors": len(specs),
        "generate_source_s": round(gen_s, 2),
        "copy_same_bytes_s": round(copy_s, 2),
        "import_only": baseline,
        "round_trip_exact": True,  # check_exact raised otherwise
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
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args.child)
    result = run(args.size, args.workdir, args.keep)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
