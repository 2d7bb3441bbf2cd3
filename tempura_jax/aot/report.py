"""The compile report: a few lines for people, the same as JSON for tools
(bench/results/compile_*.json and the README's memory plan)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax

from tempura_jax.aot.compile import Compiled
from tempura_jax.train.flops import peak_flops

GIB = 2**30


def refit(r: dict[str, Any], hbm_bytes: int) -> dict[str, Any]:
    """The report judged against `hbm_bytes` per device: fits, and the margin
    (a program the compiler refused for lack of memory never fits)."""
    peak = r["memory"]["peak"]
    margin = None if peak is None else hbm_bytes - peak
    fits = r.get("compile_error") is None and margin is not None and margin >= 0
    return {**r, "hbm_bytes": int(hbm_bytes), "fits": fits, "margin_bytes": margin}


def to_dict(c: Compiled, hbm_bytes: int | None = None, **context: Any) -> dict[str, Any]:
    """`hbm_bytes`: what to fit in (default: the chip's HBM); `context`: how it
    was asked for (config, stage, overrides, command)."""
    heavy = c.heaviest
    m = c.model
    r = {
        "topology": c.target.name,
        "platform": c.target.platform,
        "device_kind": c.device_kind,
        "devices": c.target.devices,
        "mesh": c.mesh,
        "shape": c.shape.to_json(),
        "accumulation": c.accumulation,
        "attention_impl": m.attention_impl,
        "remat": {"decoder": m.remat_decoder, "vision": m.remat_vision},
        "dtypes": {"param": m.param_dtype, "compute": m.compute_dtype},
        "compile_seconds": round(sum(p.seconds for p in c.programs), 2),
        "memory": {
            k: heavy.memory[k] for k in ("arguments", "temporaries", "outputs", "held", "peak")
        },
        "memory_program": heavy.name,
        "programs": [
            {
                "name": p.name,
                "runs": p.runs,
                "seconds": round(p.seconds, 2),
                "memory": p.memory,
                "xla_flops": p.flops,
                "error": p.error,
                "kernels": p.kernels,
                "xla_flops_source": p.flops_source,
                "hbm_limit_bytes": p.hbm_limit,
                "replans": p.replans,
            }
            for p in c.programs
        ],
        "compile_error": heavy.error,
        "xla_flops": c.xla_flops,
        "model_flops": c.model_flops,
        "peak_flops": peak_flops(c.device_kind),
        "jax_version": jax.__version__,
        **context,
    }
    return refit(r, c.target.hbm_bytes if hbm_bytes is None else hbm_bytes)


def _gib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def text(r: dict[str, Any]) -> str:
    m = r["memory"]
    s = r["shape"]
    lines = [
        f"tempura-compile: {r.get('what', 'train')} for {r['topology']} "
        f"({r['devices']} x {r['device_kind']}), mesh {r['mesh']}",
        f"  batch {s['rows']} rows x {s['seq']} tokens, {s['patches']} patches/row "
        f"({s['frame'][0]}x{s['frame'][1]} frames); accumulation {r['accumulation']}; "
        f"attention {r['attention_impl']}; remat {r['remat']}; dtypes {r['dtypes']}",
        f"  compiled in {r['compile_seconds']:.1f} s: "
        + ", ".join(f"{p['name']} {p['seconds']:.1f} s" for p in r["programs"]),
        f"  per device ({r['memory_program']}): arguments {_gib(m['arguments'])}, "
        f"temporaries {_gib(m['temporaries'])}, outputs {_gib(m['outputs'])}, "
        f"held {_gib(m.get('held'))}, "
        f"peak {_gib(m['peak'])} of {_gib(r['hbm_bytes'])} HBM",
        ("  FITS" if r["fits"] else "  DOES NOT FIT") + f": margin {_gib(r['margin_bytes'])}",
    ]
    if r.get("compile_error"):
        lines.append(f"  compiler: {r['compile_error']}")
    xla = "?" if r["xla_flops"] is None else f"{r['xla_flops']:.3e}"
    ratio = (
        f" (XLA/model {r['xla_flops'] / r['model_flops']:.2f})"
        if r["model_flops"] and r["xla_flops"]
        else ""
    )
    lines.append(f"  FLOPs per device per step: XLA {xla}, model {r['model_flops']:.3e}{ratio}")
    return "\n".join(lines)


def write_json(path: str | Path, r: dict[str, Any]) -> None:
    """Atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(r, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not meant for a shared result
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
