"""XLA FLOPs of the 3B training step against the model FLOPs `train.flops` counts.

The step (forward, backward with the config's rematerialisation, AdamW) is
lowered with abstract parameters, optimiser state and batch, so nothing of the
3B model is allocated. At TEMPURA's shapes (1 FPS frames of 336x196, each its
own image block) and 16 or 60 frames it compares, per vision attention mode:

- `dense`: no segment bounds, N x N masked logits per sample (before #9);
- `block_local_run`: the bounds a training run uses (`config_bounds`: windows
  from the config, frames from the pixel budget);
- `block_local_batch`: the tightest bounds of this batch (`static_bound`:
  TEMPURA's equal frames are aligned blocks, so frames cost their own square).

`Lowered.cost_analysis()` counts every op of the lowered program once. XLA's
cost analysis counts a loop body once too, so the step is lowered with the
plain (unchunked) loss, whose FLOPs equal the chunked loss's forward and
backward; the chunked loss's recomputed logits are not in the count.

    python bench/step_flops.py                  # 16 and 60 frames, CPU lowering
    python bench/step_flops.py --compile        # also the CPU-compiled count (slow)

`step_program` is the hook for ahead-of-time compiles for other devices (#8):
it returns the jitted step and its abstract arguments for a given mesh, so
`fn.trace(*args).lower(...).compile().cost_analysis()` gives that device's count.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import jax_batch, sample  # noqa: E402

from tempura_jax import config as C  # noqa: E402
from tempura_jax.data.processor import PixelConfig, max_frame_patches  # noqa: E402
from tempura_jax.model.inputs import is_right_padded  # noqa: E402
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from tempura_jax.model.vision_geometry import config_bounds  # noqa: E402
from tempura_jax.ops.block_local import describe, static_bound  # noqa: E402
from tempura_jax.sharding import make_mesh  # noqa: E402
from tempura_jax.train.flops import batch_flops  # noqa: E402
from tempura_jax.train.optim import OptimConfig, transform  # noqa: E402
from tempura_jax.train.step import StepFns, batch_shardings  # noqa: E402

MODES = ("dense", "block_local_run", "block_local_batch")


def model_config(remat: str, dtype: str) -> C.ModelConfig:
    return C.qwen2_5_vl_3b().replace(
        param_dtype="float32", compute_dtype=dtype, remat_decoder=remat, remat_vision=remat
    )


def tempura_batch(cfg: C.ModelConfig, frames: int, batch: int) -> dict[str, np.ndarray]:
    ids, labels, pixels, grid = sample(cfg, frames, (196, 336), 0)
    return jax_batch(cfg, ids, labels, pixels, grid, batch)


def bounds_for(mode: str, cfg: C.ModelConfig, batch_np: dict) -> tuple[int | None, int | None]:
    if mode == "dense":
        return None, None
    if mode == "block_local_run":
        return config_bounds(cfg.vision, max_frame_patches(PixelConfig()))
    return static_bound(batch_np["window_segments"]), static_bound(batch_np["frame_segments"])


def step_program(
    cfg: C.ModelConfig, batch_np: dict, bounds, mesh, loss_chunk=None, text_bound=None
):
    """(jitted step, abstract args) of the trainer's one-micro-batch step on `mesh`
    (`text_bound`: the decoder's, for packed rows longer than a sample)."""
    abstract = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    tx = transform(OptimConfig(warmup_ratio=0.0), 1000)
    fns = StepFns.build(
        graphdef,
        state,
        tx,
        mesh,
        "fsdp",
        loss_chunk,
        right_padded=is_right_padded(batch_np["segment_ids"]),
        vision_bounds=bounds,
        text_bound=text_bound,
    )
    opt = jax.eval_shape(tx.init, state)
    sh = batch_shardings(batch_np, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in batch_np.items()}
    return fns.step, (state, nnx.State({}), opt, batch)


def write_atomic(out: Path, record: dict) -> None:
    """The record so far, replacing `out` whole (a killed run leaves the last one)."""
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out)


def flops(cost) -> float:
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def measure(cfg, frames: int, batch: int, mode: str, compile_too: bool) -> dict:
    batch_np = tempura_batch(cfg, frames, batch)
    bounds = bounds_for(mode, cfg, batch_np)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    fn, args = step_program(cfg, batch_np, bounds, mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = fn.lower(*args)
    out = {
        "vision_bounds": {"window": describe(bounds[0]), "frame": describe(bounds[1])},
        "lower_s": round(time.perf_counter() - t0, 1),
        "xla_flops_lowered": flops(lowered.cost_analysis()),
    }
    if compile_too:
        t0 = time.perf_counter()
        out["xla_flops_compiled_cpu"] = flops(lowered.compile().cost_analysis())
        out["compile_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", default="16,60")
    p.add_argument("--batch", type=int, default=2, help="samples per device (the 3B config's)")
    p.add_argument("--remat", default="full", help="both towers (the 3B config's)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--compile", action="store_true", help="also compile on CPU (slow)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_flops_3b.json"))
    args = p.parse_args()
    cfg = model_config(args.remat, args.dtype)
    out = Path(args.out)
    record: dict = {
        "what": "XLA FLOPs of the 3B training step (one micro-batch) / train.flops model FLOPs",
        "jax": jax.__version__,
        "platform": platform.platform(),
        "count": "Lowered.cost_analysis() on CPU (every op of the lowered program once, "
        "rematerialised forward included); plain loss (a loop body would count once)",
        "batch": args.batch,
        "remat": args.remat,
        "compute_dtype": args.dtype,
        "frame_hw": [196, 336],
        "tpu_aot": "to fill from #8's compile path: step_program(...) on a TPU topology mesh",
        "results": {},
    }
    for frames in (int(x) for x in args.frames.split(",")):
        batch_np = tempura_batch(cfg, frames, args.batch)
        model = batch_flops(batch_np, cfg)
        # What full remat recomputes: one more forward of both towers (3 -> 4 passes).
        recompute = model * 4 / 3 if args.remat == "full" else model
        row: dict = {"model_flops": model, "model_flops_with_recompute": recompute}
        row["patches_per_sample"] = int((batch_np["frame_segments"][0] >= 0).sum())
        for mode in args.modes.split(","):
            r = measure(cfg, frames, args.batch, mode, args.compile)
            r["ratio"] = r["xla_flops_lowered"] / model
            r["ratio_vs_recompute"] = r["xla_flops_lowered"] / recompute
            row[mode] = r
            print(f"{frames} frames {mode}: {json.dumps(r)}", flush=True)
            record["results"][f"{frames}_frames"] = row
            write_atomic(out, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
