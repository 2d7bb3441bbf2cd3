"""Attention forward+backward time and achieved TFLOP/s per implementation.

Shapes are Qwen2.5-VL-3B's at TEMPURA's inputs: the vision tower over one
sample of 60 frames of 196x336 (20,160 patches, 16 heads of 80) with window
segments (8x8-patch windows, from `vision_geometry`) and with per-frame
segments (full-attention blocks); the decoder (16 query / 2 KV heads of 128,
causal) at 8k, 16k and 32k tokens. Every implementation that can take a shape
on this platform runs it next to a reference; failures are recorded, not fatal.

The reference is the dense `xla` backend where its logits fit (a byte estimate
against half the device memory, recorded per row), else `xla_chunked`: the same
math mapped over query chunks, one chunk's logits at a time. Each
implementation's largest absolute difference from the reference (output, dq,
dk, dv, in the bench dtype, computed on the device) shows it is correct, not
only fast; `best_speedup_vs_xla` is against the reference the row names.

FLOPs count only the (query, key) pairs the mask allows: forward 4*D*H per
pair, backward 2.5x forward (FlashAttention-2's convention), so TFLOP/s compares
implementations doing the same useful work.

    python bench/attention.py             # accelerator shapes
    python bench/attention.py --tiny      # CPU check (Pallas in interpret mode)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tempura_jax import config as C  # noqa: E402
from tempura_jax.model.vision_geometry import vision_geometry  # noqa: E402
from tempura_jax.ops import attention as attn  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    segments: np.ndarray  # (S,) int32
    right_padded: bool

    @property
    def seq(self) -> int:
        return int(self.segments.shape[0])

    def pairs(self) -> int:
        """Allowed (query, key) pairs under the segment (and causal) mask."""
        _, counts = np.unique(self.segments, return_counts=True)
        if self.causal:  # contiguous runs: n(n+1)/2 each
            return int((counts * (counts + 1) // 2).sum())
        return int((counts.astype(np.int64) ** 2).sum())

    def flops(self) -> float:
        return 3.5 * 4 * self.head_dim * self.heads * self.pairs()

    def dense_bytes(self, dtype) -> int:
        """What the dense reference's forward+backward holds per (head, query,
        key): float32 logits, probabilities in `dtype` and the float32 logit
        gradient (a floor: XLA's temporaries come on top)."""
        return (8 + jnp.dtype(dtype).itemsize) * self.heads * self.seq**2


def vision_shapes(frames: int, hw: tuple[int, int], cfg: C.VisionConfig) -> list[Shape]:
    grid = np.array([[1, hw[0] // cfg.patch_size, hw[1] // cfg.patch_size]] * frames)
    geo = vision_geometry(grid, cfg)
    n = geo.num_patches
    side = cfg.window_merged * cfg.spatial_merge_size
    common = dict(heads=cfg.num_heads, kv_heads=cfg.num_heads, head_dim=cfg.head_dim)
    segments = {
        f"vision_windows_{side}x{side}_{n}": geo.window_segments,
        f"vision_frames_{n}": geo.frame_segments,
    }
    return [
        Shape(name, causal=False, segments=seg, right_padded=False, **common)
        for name, seg in segments.items()
    ]


def decoder_shapes(lengths: list[int], cfg: C.TextConfig) -> list[Shape]:
    return [
        Shape(
            f"decoder_causal_{n}",
            heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            causal=True,
            segments=np.ones(n, np.int32),
            right_padded=True,
        )
        for n in lengths
    ]


OUTPUTS = ("out", "dq", "dk", "dv")
Attend = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def dispatcher(shape: Shape, impl: str) -> Attend:
    def attend(q, k, v, seg):
        return attn.attention(
            q, k, v, segment_ids=seg, causal=shape.causal, impl=impl,
            right_padded=shape.right_padded,
        )  # fmt: skip

    return attend


def xla_chunked(q, k, v, seg, *, causal: bool, scale: float, chunk: int) -> jax.Array:
    """The `xla` reference mapped over query chunks: each chunk attends to all
    keys through `xla_attention` at its offset, rematerialised in the backward,
    so one chunk's logits are live at a time. Exact up to float rounding.
    Padding queries get an id no key has and are sliced off."""
    b, s, h, d = q.shape
    n = -(-s // chunk)
    pad = n * chunk - s
    qc = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, chunk, h, d)
    no_key = jnp.iinfo(jnp.int32).min
    sc = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=no_key).reshape(b, n, chunk)

    @jax.checkpoint
    def one(args):
        qi, si, i = args
        return attn.xla_attention(
            qi, k, v, si, causal=causal, scale=scale, kv_segment_ids=seg, q_offset=i * chunk
        )

    out = jax.lax.map(one, (qc.swapaxes(0, 1), sc.swapaxes(0, 1), jnp.arange(n)))
    return out.swapaxes(0, 1).reshape(b, n * chunk, h, d)[:, :s]


def chunked_reference(shape: Shape, chunk: int) -> Attend:
    def attend(q, k, v, seg):
        scale = shape.head_dim**-0.5
        return xla_chunked(q, k, v, seg, causal=shape.causal, scale=scale, chunk=chunk)

    return attend


def inputs(shape: Shape, dtype) -> tuple[jax.Array, ...]:
    """q, k, v, the output cotangent and the segment ids (batch 1)."""
    s = shape.seq
    kq, kk, kv, kc = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (1, s, shape.heads, shape.head_dim), dtype)
    k = jax.random.normal(kk, (1, s, shape.kv_heads, shape.head_dim), dtype)
    v = jax.random.normal(kv, (1, s, shape.kv_heads, shape.head_dim), dtype)
    cot = jax.random.normal(kc, q.shape, dtype)
    return q, k, v, cot, jnp.asarray(shape.segments[None])


def time_one(shape: Shape, attend: Attend, args: tuple[jax.Array, ...], iters: int):
    """Timing of one jitted forward+backward, and its (out, dq, dk, dv) on the device."""

    def loss(q, k, v, cot, seg):
        out = attend(q, k, v, seg)
        return jnp.vdot(out.astype(jnp.float32), cot.astype(jnp.float32)), out

    # cot and seg are arguments, not constants baked into the program.
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    t0 = time.perf_counter()
    result = jax.block_until_ready(step(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        result = jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    (_, out), grads = result
    timing = {"time_s": t, "tflops": shape.flops() / t / 1e12, "compile_s": compile_s}
    return timing, (out, *grads)


@jax.jit
def max_abs_diff(ours: tuple[jax.Array, ...], ref: tuple[jax.Array, ...]) -> list[jax.Array]:
    pairs = zip(ours, ref, strict=True)
    return [jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)).max() for a, r in pairs]


def device_budget(gb: float | None) -> int:
    """Bytes the dense reference may use: `gb`, else half the device memory
    (16 GiB where the device does not say)."""
    if gb is not None:
        return int(gb * 2**30)
    try:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - some backends do not implement memory_stats
        limit = None
    return int(limit) // 2 if limit else 16 * 2**30


def implementations(shape: Shape, dtype, plat: str) -> list[str]:
    """The reference plus every backend that takes this shape here (no fallbacks)."""
    names = ["xla"]
    case = attn.Case(
        (1, shape.seq, shape.heads, shape.head_dim),
        (1, shape.seq, shape.kv_heads, shape.head_dim),
        jnp.dtype(dtype), shape.causal, True, shape.right_padded, plat,
    )  # fmt: skip
    for name, backend in attn.BACKENDS.items():
        if name == "xla":
            continue
        native = plat in backend.platforms
        if (native or (plat == "cpu" and backend.interpretable)) and attn.why_not(
            backend, case
        ) is None:
            names.append(name)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes for a CPU check")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    p.add_argument("--only", default="", help="comma list of implementations to run")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--dense-budget-gb",
        type=float,
        default=None,
        help="memory the dense xla reference may use (default: half the device's)",
    )
    p.add_argument("--chunk", type=int, default=1024, help="query chunk of xla_chunked")
    p.add_argument("--lengths", default="8192,16384,32768", help="decoder lengths (comma list)")
    args = p.parse_args()

    plat = attn.platform()
    dtype = args.dtype if args.dtype != "auto" else ("float32" if plat == "cpu" else "bfloat16")
    full = C.qwen2_5_vl_3b()
    if args.tiny:
        vcfg = dataclasses.replace(full.vision, num_heads=2, hidden_size=64)
        tcfg = dataclasses.replace(full.text, num_attention_heads=4, num_key_value_heads=2,
                                   hidden_size=128)  # fmt: skip
        shapes = vision_shapes(2, (112, 140), vcfg) + decoder_shapes([96], tcfg)
    else:
        shapes = vision_shapes(60, (196, 336), full.vision)
        shapes += decoder_shapes([int(n) for n in args.lengths.split(",")], full.text)
    only = set(filter(None, args.only.split(",")))
    kind = jax.devices()[0].device_kind
    budget = device_budget(args.dense_budget_gb)
    rows = []
    for shape in shapes:
        dense = shape.dense_bytes(dtype)
        ref_name = "xla" if dense <= budget else "xla_chunked"
        row = {
            "shape": shape.name,
            "seq": shape.seq,
            "heads": f"{shape.heads}/{shape.kv_heads}x{shape.head_dim}",
            "causal": shape.causal,
            "segments": int(np.unique(shape.segments).size),
            "useful_fwd_bwd_tflop": shape.flops() / 1e12,
            "reference": {"name": ref_name, "dense_bytes_estimate": dense, "budget_bytes": budget},
            "results": {},
        }
        runs = {"xla": dispatcher(shape, "xla")}
        if ref_name == "xla_chunked":
            row["reference"]["chunk"] = args.chunk
            gib = f"{dense / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
            row["results"]["xla"] = {"skipped": f"dense reference would not fit: ~{gib}"}
            runs = {"xla_chunked": chunked_reference(shape, args.chunk)}
        for impl in implementations(shape, dtype, plat)[1:]:
            if not only or impl in only:
                runs[impl] = dispatcher(shape, impl)
        data = inputs(shape, dtype)
        ref_out = None
        for impl, attend in runs.items():
            try:
                r, outs = time_one(shape, attend, data, args.iters)
                if impl == ref_name:
                    ref_out = outs
                elif ref_out is not None:
                    diffs = [float(x) for x in max_abs_diff(outs, ref_out)]
                    r["max_abs_diff_vs_reference"] = dict(zip(OUTPUTS, diffs, strict=True))
                del outs
            except Exception as e:  # noqa: BLE001 - recorded per implementation
                r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            row["results"][impl] = r
            print(shape.name, impl, r, flush=True)
        del data, ref_out
        ref = row["results"].get(ref_name, {}).get("time_s")
        timed = {k: v["time_s"] for k, v in row["results"].items() if "time_s" in v}
        if timed:
            best = min(timed, key=timed.get)
            row["best"] = best
            row["best_speedup_vs_xla"] = ref / timed[best] if ref else None
            row["speedup_reference"] = ref_name
        rows.append(row)
    record = {
        "what": "attention forward+backward (jit(value_and_grad)), batch 1, median of iters",
        "device": kind,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "dtype": dtype,
        "iters": args.iters,
        "tiny": args.tiny,
        "interpret_mode": plat == "cpu",
        "flops": "useful pairs only: 4*D*H per pair forward, x3.5 forward+backward",
        "reference": "per row: dense xla where its estimated bytes fit the budget, else "
        "xla_chunked (same math over query chunks); max_abs_diff_vs_reference and "
        "best_speedup_vs_xla are against it",
        "rows": rows,
    }
    name = "cpu" if plat == "cpu" else kind.lower().replace(" ", "_")
    suffix = "_tiny" if args.tiny else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"attention{suffix}_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
