"""The README's memory plan, rendered only from committed compile reports
(bench/results/compile_*.json, written by tempura-compile --out): one row per
report, and the planned slices without a report listed as still to run.

    python bench/memory_plan.py            # print the Markdown table
    python bench/memory_plan.py --write    # put it in README.md after the marker
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
PLANNED_CONFIGS = {c for c, _ in PLANNED}
GIB = 2**30


def reports() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("compile_*.json"))]


def _g(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f}"


def _t(flops: float | None) -> str:
    return f"{flops / 1e12:.1f}" if flops else "?"


def tuning(r: dict) -> str:
    """Full fine-tuning, or the adapter method the report's overrides name."""
    methods = [o.split("=", 1)[1] for o in r.get("overrides", []) if o.startswith("peft.method=")]
    return methods[-1] if methods and methods[-1] != "none" else "full"


def row_shape(r: dict) -> str:
    """Tokens x patches per row, and whether the run packs several samples a row."""
    packed = "data.packing=true" in r.get("overrides", [])
    return f"{r['shape']['seq']} x {r['shape']['patches']}" + (" packed" if packed else "")


def table(rs: list[dict]) -> str:
    head = (
        "| config | tuning | slice | mesh (data, fsdp, tensor) | remat dec/vis | row tokens x "
        "patches | rows/device x accum | "
        "args / temps / held / peak GiB per device | HBM GiB | fits (margin GiB) | "
        "XLA / model TFLOPs per device-step | compile s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = []
    for r in rs:
        if r.get("what", "train") != "train" or r.get("config") not in PLANNED_CONFIGS:
            continue
        m, mesh = r["memory"], r["mesh"]
        rows.append(
            f"| {r.get('config', '?')} | {tuning(r)} | "
            f"{r['topology']} ({r['devices']} x {r['device_kind']}) | "
            f"({mesh['data']}, {mesh['fsdp']}, {mesh['tensor']}) | "
            f"{r['remat']['decoder']}/{r['remat']['vision']} | {row_shape(r)} | "
            f"{r['shape']['rows'] // max(1, mesh['data'] * mesh['fsdp'])} x {r['accumulation']} | "
            f"{_g(m['arguments'])} / {_g(m['temporaries'])} / {_g(m.get('held'))} / "
            f"{_g(m['peak'])} | "
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


def split_readme(readme: str) -> tuple[str, str, str]:
    """(before and including the marker, the table, after): the table runs
    from the marker to the next blank line that precedes a heading."""
    start = readme.index(MARK) + len(MARK)
    end = readme.index("\n#", start)
    return readme[:start], readme[start:end].strip("\n"), readme[end:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    text = table(reports())
    path = ROOT / "README.md"
    head, current, tail = split_readme(path.read_text())
    if args.check:
        return 0 if current == text else 1
    if args.write:
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(f"{head}\n{text}\n\n{tail.lstrip(chr(10))}")
        tmp.replace(path)
        return 0
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
