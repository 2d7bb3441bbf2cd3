"""End-to-end check of what tempura-jax does today, offline, on CPU, in ~1 min.

1. writes a tiny random Qwen2.5-VL checkpoint in Hugging Face layout;
2. converts it to a tempura-jax Orbax checkpoint and back (`tempura-convert`),
   checking the round trip is bit-exact;
3. loads the Orbax checkpoint with `tempura_jax.load_pretrained` and runs the
   model on a TEMPURA per-frame sequence (every 1-FPS frame its own image);
4. writes the synthetic demo data set (videos with exact events, VER JSON,
   evaluation annotations, a tiny tokenizer), reads stage-1 batches through
   the Grain pipeline (decode, 1 FPS, blank the masked event, stamp times,
   Qwen pixel rows, chat tokens, labels, 3D positions), and scores one
   example's assistant reply with the model.

Stage-1/2 training (`launch/train.py`) replaces this as the main job once it lands.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

import tempura_jax
from converters.convert import to_hf, to_orbax
from tempura_jax import config as C
from tempura_jax.io.hf_checkpoint import HFCheckpoint
from tempura_jax.random_checkpoint import write_random_hf_checkpoint


def per_frame_sequence(cfg: C.ModelConfig, frames: int, grid: tuple[int, int, int]):
    """<|vision_start|><|image_pad|>*n<|vision_end|> per frame, then a short prompt."""
    n = int(np.prod(grid)) // cfg.vision.merge_unit
    block = [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
    ids = [1, 2] + block * frames + [3, 4, 5]
    rows = frames * int(np.prod(grid))
    pixels = np.random.default_rng(0).standard_normal((rows, cfg.vision.patch_dim), np.float32)
    return np.array([ids]), pixels, np.array([grid] * frames)


def data_step(workdir: Path, model) -> None:
    from tempura_jax.data.config import DataConfig
    from tempura_jax.data.demo import make_demo_data
    from tempura_jax.data.pipeline import load_dataset
    from tempura_jax.data.processor import PixelConfig
    from tempura_jax.data.records import load_records
    from tempura_jax.data.sample import ExampleBuilder
    from tempura_jax.data.tokenizer import Tokenizer

    paths = make_demo_data(workdir / "data")
    cfg = DataConfig(
        data=(paths["stage1"],),
        media_root=paths["media_root"],
        tokenizer=paths["tokenizer"],
        pixels=PixelConfig(min_pixels=112 * 56, max_pixels=112 * 56),  # 56x84 frames
        max_seq_len=1024,
        batch_size=2,
        skip_log=str(workdir / "skipped.jsonl"),
    )
    mcfg = model.config
    ds = load_dataset(cfg, mcfg)
    it = iter(ds)
    batch = next(it)
    print(f"[4/4] demo data: {paths['media_root']} ({len(ds.records)} stage-1 records)")
    print(
        f"      batch: tokens {batch['input_ids'].shape}, pixels {batch['pixel_values'].shape}, "
        f"skipped so far: {ds.skips.summary()}; iterator state {it.get_state()['grain']}"
    )
    rec = load_records([paths["stage1"]], paths["media_root"])[0][0]
    ex = ExampleBuilder(cfg, Tokenizer(cfg.tokenizer), mcfg).build(rec)
    out = model(ex.input_ids[None], pixel_values=ex.pixel_values, image_grid_thw=ex.grid_thw)
    logits = np.asarray(out.logits[0, :-1], np.float64)
    target = ex.labels[1:]
    keep = target >= 0
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -logp[keep, target[keep]].mean()
    print(
        f"      {rec.source.split('/')[-1]}: {len(ex.times)} stamped frames, "
        f"{ex.num_tokens} tokens, {int(keep.sum())} trained; reply loss (random weights) {nll:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("workdir/demo"))
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args(argv)
    cfg = C.tiny()
    hf_dir, ckpt, back = args.workdir / "hf", args.workdir / "orbax", args.workdir / "hf_back"
    for d in (hf_dir, ckpt, back):  # only what an earlier demo run wrote
        shutil.rmtree(d, ignore_errors=True)
    nbytes = write_random_hf_checkpoint(cfg, hf_dir, dtype="float32")
    print(f"[1/4] random tiny checkpoint: {hf_dir} ({nbytes / 1e6:.1f} MB)")
    to_orbax(hf_dir, ckpt)
    to_hf(ckpt, back)
    a, b = HFCheckpoint(hf_dir), HFCheckpoint(back)
    exact = a.names() == b.names() and all(
        a.read(n).tobytes() == b.read(n).tobytes() for n in a.names()
    )
    print(f"[2/4] HF -> Orbax -> HF round trip bit-exact: {exact}")
    if not exact:
        raise SystemExit("round trip changed the weights")
    model = tempura_jax.load_pretrained(ckpt)
    # 336x196 frames (TEMPURA's pixel budget) are 14 x 24 patches; keep it small here.
    ids, pixels, grids = per_frame_sequence(cfg, args.frames, (1, 6, 10))
    out = model(ids, pixel_values=pixels, image_grid_thw=grids)
    logits = np.asarray(out.logits)
    pos, _ = tempura_jax.rope_index(ids, config=cfg, image_grid_thw=grids)
    starts = pos[0, 0, np.flatnonzero(ids[0] == cfg.vision_start_token_id) + 1]
    print(f"[3/4] {args.frames} frames as images, {ids.shape[1]} tokens -> logits {logits.shape}")
    print(f"      temporal id of each frame: {starts.tolist()}; rope delta {out.rope_deltas[0, 0]}")
    finite = bool(np.isfinite(logits).all())
    print(f"      next-token argmax {int(logits[0, -1].argmax())}; all finite: {finite}")
    data_step(args.workdir, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
