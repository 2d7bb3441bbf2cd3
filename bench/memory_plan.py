"""The README's memory plan, rendered only from committed compile reports
(bench/results/compile_*.json, written by tempura-compile --out): one row per
report, and the planned slices without a report listed as still to run.

    python bench/memory_plan.py            # print the Markdown table
    python bench/memory_plan.py --check    # exit 1 if README.md's table differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MARK = "<!-- memory-plan-table -->"
# (config, topology) the plan asks for.
PLANNED = [
    ("qwen2_5_vl_3b", "v5e-8"),
    ("qwen2_5_vl_3b", "v5p-8"),
    ("qwen2_5_vl_3b", "v6e-8"),
    ("qwen2_5_vl_3b", "h100-8"),
    ("qwen2_5_vl_7b", "v5p-8"),
    ("qwen2_5_vl_7b", "v5p-16"),
]
GIB = 2**30


def reports() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("compile_*.json"))]


def _g(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f}"


def _t(flops: float | None) -> str:
    return f"{flops / 1e12:.1f}" if flops else "?"


def table(rs: list[dict]) -> str:
    head = (
        "| config | slice | mesh (data, fsdp, tensor) | remat dec/vis | accum | "
        "args / temps / peak GiB per device | HBM GiB | fits (margin GiB) | "
        "XLA / model TFLOPs per device-step | compile s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = []
    for r in rs:
        if r.get("what", "train") != "train":
            continue
        m, mesh = r["memory"], r["mesh"]
        rows.append(
            f"| {r.get('config', '?')} | {r['topology']} ({r['devices']} x {r['device_kind']}) | "
            f"({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}) | "
            f"{r['remat']['decoder']}/{r['remat']['vision']} | {r['accumulation']} | "
            f"{_g(m['arguments'])} / {_g(m['temporaries'])} / {_g(m['peak'])} | "
            f"{_g(r['hbm_bytes'])} | {'yes' if r['fits'] else 'no'} ({_g(r['margin_bytes'])}) | "
            f"{_t(r['xla_flops'])} / {_t(r['model_flops'])} | "
            f"{r['compile_seconds']:.0f} |"
        )
    done = {(r.get("config"), r["topology"]) for r in rs}
    todo = [f"{c} on {t}" for c, t in PLANNED if (c, t) not in done]
    out = "\n".join([head, *rows])
    if todo:
        out += "\n\nStill to run: " + ", ".join(todo) + "."
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = table(reports())
    if not args.check:
        print(text)
        return 0
    readme = (ROOT / "README.md").read_text()
    start = readme.index(MARK) + len(MARK)
    return 0 if readme[start:].lstrip("\n").startswith(text) else 1


if __name__ == "__main__":
    sys.exit(main())
