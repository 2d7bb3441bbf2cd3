"""Step shapes and padding per epoch: (sequence, patch) buckets against packed
rows (data.packing=true), over a length distribution. CPU only, no model.

    python bench/train_efficiency.py --out bench/results/train_efficiency.json
    python bench/train_efficiency.py --data ver.json --media-root data/ver \\
        --tokenizer TOKENIZER_DIR --out ...

Lengths: synthetic (default) are VER-like: video seconds lognormal around
`--median-seconds`, 1 FPS, at most `--max-frames` frames of TEMPURA's
336x196 (84 merged tokens = 336 patches each, plus the two vision tokens),
and text (prompt + target) lognormal around `--text-median` tokens. With
`--data`, each record's (tokens, patches) is measured by the pipeline itself
(`ExampleBuilder.measure`: container packet times, no decoding).

Buckets: each micro-batch of `per_device x devices` rows (one accumulation
step of every device: all agree on one shape) is padded to the
`seq_buckets`/`patch_buckets` of the data config; every distinct shape is a
compile of the step. Packing: the pipeline's own plan (`PackPlan`) for each
`--pack` entry ROW_TOKENS/PATCHES/PER_DEVICE[/SORT] (data.pack_seq_len,
data.pack_patches, batch.per_device, data.pack_sort); PATCHES 0 is the default (merge^2 x
ROW_TOKENS, never binding) and "auto" is ROW_TOKENS x the data's patches
per token, rounded up to 64. A record too big for a row drops frames down
to min_frames like the pipeline (else it is skipped as too_long).
`padding_bound` is the least padding any packing into those rows can reach
(records above half a row never share one).

`step_flops` gathers what the 3B step costs against `train.flops` model
FLOPs, from the committed runs of the benches that compile it (minutes
each, so not re-run here): `step_flops.py` (CPU lowering at 16 and 60
frames, dense before #9 and block-local after), its `tpu_aot` compiles
(`tempura-compile`, v5p-8) and `packed_flops.py` (packed long rows).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tempura_jax.data.batching import patch_buckets, pick, seq_buckets  # noqa: E402
from tempura_jax.data.config import DataConfig  # noqa: E402
from tempura_jax.data.media import Sampling  # noqa: E402
from tempura_jax.data.packing import PackPlan  # noqa: E402
from tempura_jax.data.processor import PixelConfig  # noqa: E402

TEMPURA_PIXELS = PixelConfig(min_pixels=320 * 180, max_pixels=320 * 180)  # 336x196


def synthetic(a) -> dict[str, np.ndarray]:
    """frames (before any budget) and text tokens per record."""
    rng = np.random.default_rng(a.seed)
    seconds = rng.lognormal(math.log(a.median_seconds), a.sigma, a.records)
    frames = np.clip(np.floor(seconds * a.fps), 1, a.max_frames).astype(np.int64)
    text = np.round(rng.lognormal(math.log(a.text_median), a.text_sigma, a.records))
    return {"frames": frames, "text": text.astype(np.int64)}


def fit(frames, text, tpf: int, seq: int, patches: float, min_frames: int):
    """The pipeline's budget rule (`ExampleBuilder._fit`) in closed form:
    (tokens, patches) per record, -1 where it is skipped as too_long."""
    per = tpf + 2
    n = np.minimum(frames, np.maximum((seq - text) // per, 0))
    if math.isfinite(patches):
        n = np.minimum(n, int(patches) // (4 * tpf))
    ok = (n >= np.minimum(min_frames, frames)) & (text < seq)
    tokens = np.where(ok, n * per + text, -1)
    return np.stack([tokens, np.where(ok, n * 4 * tpf, -1)], 1)


def measured(a, cfg: DataConfig) -> np.ndarray:
    from tempura_jax.data.lengths import measure_records
    from tempura_jax.data.records import load_records

    records, _, _ = load_records(a.data, cfg.media_root)
    out = measure_records(records, cfg, None)
    return np.array([m if isinstance(m, tuple) else (-1, -1) for m in out], np.int64)


def bucketed(lengths: np.ndarray, cfg: DataConfig, rows: int, epochs: int, seed: int) -> dict:
    ok = lengths[lengths[:, 0] >= 0]
    sb, pb = seq_buckets(cfg), patch_buckets(cfg)
    per_epoch, shapes_all, slots, real = [], set(), np.zeros(2), np.zeros(2)
    for e in range(epochs):
        order = np.random.default_rng([seed, e]).permutation(len(ok))
        steps = len(ok) // rows
        batches = ok[order[: steps * rows]].reshape(steps, rows, 2)
        shapes = set()
        for b in batches:
            s = (pick(int(b[:, 0].max()), sb, "tokens"), pick(int(b[:, 1].max()), pb, "patches"))
            shapes.add(s)
            slots += (rows * s[0], rows * s[1])
            real += b.sum(0)
        per_epoch.append(len(shapes))
        shapes_all |= shapes
    return {
        "seq_buckets": len(sb),
        "patch_buckets": len(pb),
        "micro_batches_per_epoch": len(ok) // rows,
        "shapes_per_epoch": per_epoch,
        "shapes_all_epochs": len(shapes_all),
        "padding_tokens": float(1 - real[0] / slots[0]),
        "padding_patches": float(1 - real[1] / slots[1]),
    }


def padding_bound(lengths: np.ndarray, budget: tuple[int, int], rows: int) -> list[float]:
    """The least padding any packing into steps of `rows` rows can reach: no
    two records above half a row's tokens or patches share a row, and no row
    holds more than its budget."""
    cap = np.array(budget, np.float64)
    big = int((lengths > cap / 2).any(axis=1).sum())
    total = lengths.sum(0).astype(np.float64)
    need = max(big, *np.ceil(total / cap).astype(int).tolist())
    need = -(-need // rows) * rows
    return [float(x) for x in 1 - total / (need * cap)]


def packed(lengths: np.ndarray, cfg: DataConfig, rows: int, epochs: int) -> dict:
    usable = np.flatnonzero(lengths[:, 0] >= 0)
    t0 = time.perf_counter()
    plan = PackPlan(lengths[usable], usable, cfg, rows)
    plan_s = time.perf_counter() - t0
    steps = plan.steps_per_epoch
    slots = np.array([cfg.row_tokens, cfg.row_patches], float) * rows * steps * epochs
    real, per_row, dropped = np.zeros(2), [], []
    by_index = dict(zip(usable.tolist(), lengths[usable].tolist(), strict=True))
    for e in range(epochs):
        plan_rows = plan.rows(e)
        used = plan_rows[: steps * rows]
        placed = {i for r in used for i in r}
        real += np.array([by_index[i] for i in placed], float).sum(0)
        per_row.append(float(np.mean([len(r) for r in used])))
        dropped.append(len(usable) - len(placed))
    return {
        "step_shape": [rows, cfg.row_tokens, cfg.row_patches],
        "shapes_per_epoch": [1] * epochs,
        "micro_batches_per_epoch": steps,
        "samples_per_row": per_row,
        "records_not_in_epoch": dropped,  # the plan's last partial micro-batch, per epoch
        "padding_tokens": float(1 - real[0] / slots[0]),
        "padding_patches": float(1 - real[1] / slots[1]),
        "padding_bound": padding_bound(lengths[usable], plan.budget, rows),
        "plan_seconds_per_epoch": plan_s,
    }


def step_flops(results: Path = ROOT / "bench" / "results") -> dict:
    """XLA / model FLOPs of the 3B step per source file, from committed results."""
    out: dict = {}
    for cpu in sorted(results.glob("step_flops_3b*.json")):  # remat full, dots, none
        r = json.loads(cpu.read_text())
        out[cpu.name] = {
            frames: {m: round(v["ratio"], 3) for m, v in row.items() if isinstance(v, dict)}
            for frames, row in r["results"].items()
        }
        aot = r.get("tpu_aot")
        aot = aot if isinstance(aot, dict) else {}  # a note where no TPU compile was run
        for frames, v in aot.items():
            if isinstance(v, dict) and "file" in v:
                out[v["file"]] = {frames: {"block_local_run": v["ratio"]}}
    packed_file = results / "packed_flops_3b.json"
    if packed_file.exists():
        r = json.loads(packed_file.read_text())
        out[packed_file.name] = {k: round(v["ratio"], 3) for k, v in r["results"].items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", nargs="*", default=None, help="VER JSON files (measured lengths)")
    p.add_argument("--media-root", default=".")
    p.add_argument("--tokenizer", default="")
    p.add_argument("--records", type=int, default=20000, help="synthetic records")
    p.add_argument("--median-seconds", type=float, default=100.0)
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma of the seconds")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--max-frames", type=int, default=85)
    p.add_argument("--tokens-per-frame", type=int, default=84, help="merged tokens (336x196)")
    p.add_argument("--text-median", type=float, default=300.0, help="prompt + target tokens")
    p.add_argument("--text-sigma", type=float, default=0.4)
    p.add_argument("--max-seq-len", type=int, default=8192)
    p.add_argument("--per-device", type=int, default=2)
    p.add_argument(
        "--devices", default="1,8", help="comma list: devices sharing one micro-batch (one shape)"
    )
    p.add_argument(
        "--pack",
        default="8192/0/2,8192/auto/2,8192/auto/2/1024,16384/auto/1/1024,23424/auto/1/1024",
        help="comma list of ROW_TOKENS/PATCHES/PER_DEVICE[/SORT] (PATCHES: 0, auto or an "
        "integer; SORT: data.pack_sort, 0 = first fit)",
    )
    p.add_argument("--pack-window", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    sampling = Sampling(fps=a.fps, max_frames=a.max_frames)
    base = DataConfig(
        data=tuple(a.data or ()),
        media_root=a.media_root,
        tokenizer=a.tokenizer,
        sampling=sampling,
        pixels=TEMPURA_PIXELS,
        max_seq_len=a.max_seq_len,
        seed=a.seed,
        pack_window=a.pack_window,
    )
    if a.data:
        source = {"kind": "measured", "data": a.data}
        bucket_lengths = measured(a, base)
    else:
        source = {
            "kind": "synthetic",
            **{k: getattr(a, k) for k in ("records", "median_seconds", "sigma", "fps")},
            **{k: getattr(a, k) for k in ("max_frames", "tokens_per_frame", "text_median")},
            "text_sigma": a.text_sigma,
        }
        raw = synthetic(a)
        bucket_lengths = fit(
            raw["frames"], raw["text"], a.tokens_per_frame, a.max_seq_len, math.inf, 2
        )
    ok = bucket_lengths[bucket_lengths[:, 0] >= 0]
    result = {
        "what": "distinct step shapes per epoch and padded share of token/patch slots",
        "machine": platform.processor() or platform.machine(),
        "source": source,
        "records_usable": int(len(ok)),
        "mean_tokens": float(ok[:, 0].mean()),
        "mean_patches": float(ok[:, 1].mean()),
        "epochs": a.epochs,
        "by_devices": {},
    }
    ratio = ok[:, 1].sum() / ok[:, 0].sum()  # patches per token
    packed_lengths = {}
    for devices in (int(d) for d in a.devices.split(",")):
        rows = a.per_device * devices
        runs = {"bucket_micro_batch_rows": rows}
        runs["buckets"] = bucketed(bucket_lengths, base, rows, a.epochs, a.seed)
        runs["packed"] = []
        for entry_text in a.pack.split(","):
            row_tokens, patches, per_device, *sort = entry_text.strip().split("/")
            row_tokens, per_device = int(row_tokens), int(per_device)
            pp = math.ceil(row_tokens * ratio / 64) * 64 if patches == "auto" else int(patches)
            cfg = base.replace(
                packing=True,
                pack_seq_len=row_tokens,
                pack_patches=pp,
                pack_sort=int(sort[0]) if sort else 0,
            )
            key = (row_tokens, pp)
            if key not in packed_lengths:
                packed_lengths[key] = (
                    measured(a, cfg)
                    if a.data
                    else fit(
                        raw["frames"],
                        raw["text"],
                        a.tokens_per_frame,
                        a.max_seq_len,
                        cfg.row_patches,
                        sampling.min_frames,
                    )  # fmt: skip
                )
            lengths = packed_lengths[key]
            entry = {"setting": entry_text.strip(), "per_device": per_device}
            entry |= packed(lengths, cfg, per_device * devices, a.epochs)
            entry["records_skipped_too_long"] = int((lengths[:, 0] < 0).sum())
            entry["records_fewer_frames"] = int(
                ((lengths[:, 1] < bucket_lengths[:, 1]) & (lengths[:, 0] >= 0)).sum()
            )
            runs["packed"].append(entry)
        result["by_devices"][str(devices)] = runs
    result["step_flops"] = step_flops()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        out = Path(a.out)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
