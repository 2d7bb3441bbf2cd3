"""XLA FLOPs of the 3B step on packed rows longer than a sample, against model FLOPs.

VER-like rows reach 3% padding only when a row holds several samples
(data.pack_seq_len=23424 for samples of at most 8192 tokens, see
train_efficiency_ver_like.json). Dense causal attention over such a row costs
row^2 where the samples cost the sum of their own halves of a square; the
decoder's `text_bound` (`train.step.text_bound`: round_bound(max_seq_len))
makes it block-local. This lowers, with the same samples (TEMPURA's 336x196
frames, each its own image block):

- `unpacked`: one sample per row, each row exactly its sample (no padding);
- `packed_dense`: the samples in one row of `--row` tokens, dense decoder;
- `packed_text_bound`: the same row, decoder block-local within the bound.

The vision tower runs the trainer's run bounds in all three. The count is
`Lowered.cost_analysis()` on CPU, as in `step_flops.py`.

    python bench/packed_flops.py        # 4 samples of 64 frames in a 23424 row
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_flops import flops, model_config, step_program, write_atomic  # noqa: E402
from train_step import jax_batch, sample  # noqa: E402

from tempura_jax.data.config import DataConfig  # noqa: E402
from tempura_jax.data.packing import collate_packed  # noqa: E402
from tempura_jax.data.processor import PixelConfig, max_frame_patches  # noqa: E402
from tempura_jax.data.sample import Example  # noqa: E402
from tempura_jax.model.inputs import prepare_inputs  # noqa: E402
from tempura_jax.model.vision_geometry import config_bounds  # noqa: E402
from tempura_jax.ops.block_local import describe  # noqa: E402
from tempura_jax.sharding import make_mesh  # noqa: E402
from tempura_jax.train.flops import batch_flops  # noqa: E402
from tempura_jax.train.step import text_bound  # noqa: E402

MODES = ("unpacked", "packed_dense", "packed_text_bound")


def example(cfg, frames: int, seed: int) -> Example:
    ids, labels, pixels, grid = sample(cfg, frames, (196, 336), seed)
    inp = prepare_inputs(cfg, ids, pixel_values=pixels, image_grid_thw=grid)
    return Example(
        source=f"synthetic-{seed}",
        input_ids=ids[0].astype(np.int32),
        labels=labels[0].astype(np.int32),
        position_ids=np.asarray(inp.position_ids)[:, 0],
        pixel_values=pixels,
        grid_thw=grid,
        second_per_grid_ts=np.zeros(len(grid), np.float32),
        times=np.arange(frames, dtype=np.float64),
        duration=float(frames),
        as_video=False,
    )


def unpacked(cfg, frames: int, n: int) -> dict[str, np.ndarray]:
    """n rows, one sample each (the samples are equal in length, not in values)."""
    rows = [jax_batch(cfg, *sample(cfg, frames, (196, 336), seed), 1) for seed in range(n)]
    out = {k: np.concatenate([r[k] for r in rows]) for k in rows[0] if k != "position_ids"}
    out["position_ids"] = np.concatenate([r["position_ids"] for r in rows], axis=1)
    return out


def lower(cfg, batch_np: dict, tb) -> dict:
    bounds = config_bounds(cfg.vision, max_frame_patches(PixelConfig()))
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    fn, args = step_program(cfg, batch_np, bounds, mesh, text_bound=tb)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = fn.lower(*args)
    return {
        "shape": list(batch_np["input_ids"].shape) + [int(batch_np["pixel_values"].shape[1])],
        "text_bound": describe(tb),
        "vision_bounds": [describe(b) for b in bounds],
        "lower_s": round(time.perf_counter() - t0, 1),
        "xla_flops_lowered": flops(lowered.cost_analysis()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64, help="frames per sample")
    p.add_argument("--samples", type=int, default=4, help="samples in the packed row")
    p.add_argument("--row", type=int, default=23424, help="data.pack_seq_len")
    p.add_argument("--patches", type=int, default=87232, help="data.pack_patches")
    p.add_argument("--max-seq-len", type=int, default=8192, help="data.max_seq_len")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "packed_flops_3b.json"))
    args = p.parse_args()
    cfg = model_config("full", "bfloat16")
    data = DataConfig(
        packing=True,
        max_seq_len=args.max_seq_len,
        pack_seq_len=args.row,
        pack_patches=args.patches,
        pixels=PixelConfig(),
    )
    examples = [example(cfg, args.frames, seed) for seed in range(args.samples)]
    packed = collate_packed([examples], data, cfg, 0, batch_size=1)
    batches = {"unpacked": unpacked(cfg, args.frames, args.samples), "packed": packed}
    tokens = sum(e.num_tokens for e in examples)
    patches = sum(e.num_patches for e in examples)
    record: dict = {
        "what": "XLA FLOPs of the 3B step (one micro-batch, remat full) / train.flops model "
        "FLOPs, one sample per row against the samples packed in one longer row",
        "jax": jax.__version__,
        "platform": platform.platform(),
        "count": "Lowered.cost_analysis() on CPU, plain loss (see step_flops.py)",
        "samples": args.samples,
        "frames_per_sample": args.frames,
        "tokens_per_sample": examples[0].num_tokens,
        "row": [args.row, args.patches],
        "row_padding": [1 - tokens / args.row, 1 - patches / args.patches],
        "max_seq_len": args.max_seq_len,
        "results": {},
    }
    out = Path(args.out)
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown {mode!r}; known: {', '.join(MODES)}")
        batch = batches["unpacked" if mode == "unpacked" else "packed"]
        tb = text_bound(data) if mode == "packed_text_bound" else None
        r = lower(cfg, batch, tb)
        r["model_flops"] = batch_flops(batch, cfg)
        r["ratio"] = r["xla_flops_lowered"] / r["model_flops"]
        record["results"][mode] = r
        print(f"{mode}: {json.dumps(r)}", flush=True)
        write_atomic(out, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
