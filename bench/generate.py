"""Generation throughput: tempura-jax `generate` vs transformers `generate` (torch).

Both sides load the same HF directory (a random-weight Qwen2.5-VL-3B-shaped
checkpoint written here, or `--model DIR`) and get the same left-padded
prompts in the processor's layout: a text prefix, `--frames` 1-FPS frames as
image blocks (TEMPURA's stamped-frame mode) and a question; rows differ in
prefix length so batches above 1 carry padding. Decoding is greedy with no
stop id, so both sides emit exactly `--new-tokens` tokens per row.

Each side is timed from the host arrays to the host tokens (ours: prepare_inputs
+ generate; torch: copy to the device + generate), so fixed costs cancel in
decode: prefill = a run with one new token (time to first token), decode
tokens/s = batch * (new_tokens - 1) / (full run - prefill run). Medians of
`--repeats` after one warm-up run (compilation excluded).

    python bench/generate.py                         # GPU: 3B shapes, batch 1 and 8
    python bench/generate.py --model DIR             # real weights
    python bench/generate.py --tiny --out g.json     # CPU check, fp32
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Torch shares the GPU with JAX in this process: let XLA grow its pool on demand.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

import tempura_jax  # noqa: E402
from tempura_jax import config as C  # noqa: E402
from tempura_jax.inference.generate import SamplingConfig, generate  # noqa: E402
from tempura_jax.random_checkpoint import write_random_hf_checkpoint  # noqa: E402

Arrays = dict[str, np.ndarray]
# (frames, frame height/width px, text tokens, new tokens, repeats) per mode.
DEFAULTS = {"full": (16, "196,336", 64, 256, 3), "tiny": (3, "56,84", 16, 128, 5)}


def prompts(cfg: C.ModelConfig, batch: int, frames: int, hw: tuple[int, int], text: int) -> Arrays:
    """Left-padded processor-layout arrays; row i drops i % 4 prefix tokens."""
    rng = np.random.default_rng(batch)
    v = cfg.vision
    gh, gw = hw[0] // v.patch_size, hw[1] // v.patch_size
    block = [cfg.vision_start_token_id] + [cfg.image_token_id] * (gh * gw // v.merge_unit)
    block += [cfg.vision_end_token_id]
    top = min(cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, 150000)
    rows = []
    for i in range(batch):
        prefix = rng.integers(0, top, max(text // 2 - i % 4, 1)).tolist()
        question = rng.integers(0, top, text - text // 2).tolist()
        rows.append(prefix + block * frames + question)
    seq = max(map(len, rows))
    ids = np.zeros((batch, seq), np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, seq - len(row) :], mask[i, seq - len(row) :] = row, 1
    grid = np.array([[1, gh, gw]] * (frames * batch), np.int64)
    pixels = rng.standard_normal((int(grid.prod(-1).sum()), v.patch_dim), dtype=np.float32)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time of `fn` (which returns host data, so it has synced)."""
    out = fn()  # warm-up: compilation, autotuning, allocator growth
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def side_summary(arrays: Arrays, new_tokens: int, prefill_s: float, total_s: float) -> dict:
    batch = arrays["input_ids"].shape[0]
    decode_s = total_s - prefill_s
    return {
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": int(arrays["attention_mask"].sum()) / prefill_s,
        "total_s": total_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s if decode_s > 0 else None,
    }


def run_jax(
    path: Path, inputs: dict[int, Arrays], new_tokens: int, repeats: int, dtype: str, attn: str
) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    model = tempura_jax.load_pretrained(path, dtype=dtype, compute_dtype=dtype, attention_impl=attn)
    cfg = model.config
    results, tokens = {}, {}
    for batch, arrays in inputs.items():

        def run(n: int, arrays: Arrays = arrays) -> np.ndarray:
            x = tempura_jax.prepare_inputs(cfg, **arrays)
            return generate(model, x, SamplingConfig(max_new_tokens=n)).tokens

        prefill_s, _ = timed(lambda: run(1), repeats)
        total_s, tokens[batch] = timed(lambda: run(new_tokens), repeats)
        results[batch] = side_summary(arrays, new_tokens, prefill_s, total_s)
        print(f"jax   batch {batch}: {results[batch]}", flush=True)
    return results, tokens


def torch_attention(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def run_torch(
    path: Path, inputs: dict[int, Arrays], new_tokens: int, repeats: int, dtype: str, attn: str
) -> tuple[dict[int, dict], dict[int, np.ndarray], dict]:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # a tiny model: threads only add spin-waits on a busy host
    attn = torch_attention(attn, device)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attn
    ).to(device)
    model.eval()
    # A fresh config: a checkpoint's own (eos ids, repetition penalty, sampling) must not apply.
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=None, bos_token_id=None, pad_token_id=0
    )
    # transformers 5.x numbers M-RoPE from the processor's modality types (1 image, 2 video).
    wants_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    cfg = model.config
    results, tokens = {}, {}
    for batch, arrays in inputs.items():
        host = {k: torch.from_numpy(a) for k, a in arrays.items()}
        if wants_types:
            ids = arrays["input_ids"]
            types = (ids == cfg.image_token_id) + 2 * (ids == cfg.video_token_id)
            host["mm_token_type_ids"] = torch.from_numpy(types.astype(np.int64))
        seq = arrays["input_ids"].shape[1]

        def run(n: int, host: dict = host, seq: int = seq) -> np.ndarray:
            x = {k: t.to(device) for k, t in host.items()}
            x["pixel_values"] = x["pixel_values"].to(model.dtype)
            with torch.inference_mode():
                out = model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            out = out[:, seq:].cpu().numpy()
            if out.shape[1] != n:
                raise RuntimeError(f"transformers generated {out.shape[1]} tokens, asked for {n}")
            return out

        prefill_s, _ = timed(lambda: run(1), repeats)
        total_s, tokens[batch] = timed(lambda: run(new_tokens), repeats)
        results[batch] = side_summary(arrays, new_tokens, prefill_s, total_s)
        print(f"torch batch {batch}: {results[batch]}", flush=True)
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "attention": attn,
        "mm_token_type_ids": wants_types,
    }
    return results, tokens, info


def release_torch() -> None:
    """Hand the torch side's cached GPU memory back before JAX runs."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Greedy tokens: per row, how many leading steps the two sides share, and how
    many distinct tokens ours emitted (a row repeating one token proves little)."""
    same = np.cumprod(ours == theirs, axis=1).sum(axis=1)
    return {
        "prefix_per_row": same.tolist(),
        "min_prefix": int(same.min()),
        "all_equal": bool((ours == theirs).all()),
        "distinct_per_row": [len(set(row.tolist())) for row in ours],
    }


def git_commit(override: str | None) -> dict[str, Any]:
    def git(*argv: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    if override:  # a copied tree without .git (the device machines)
        return {"commit": override, "dirty": None}
    status = git("status", "--porcelain")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def versions(with_torch: bool) -> dict[str, str | None]:
    out = {"python": platform.python_version(), "jax": jax.__version__, "torch": None}
    out["transformers"] = None
    if with_torch:
        import torch
        import transformers

        out["torch"], out["transformers"] = torch.__version__, transformers.__version__
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny fp32 model on CPU: a quick check")
    p.add_argument("--model", default=None, help="HF directory (default: random 3B-shaped)")
    p.add_argument("--workdir", default=None, help="keep/reuse the random checkpoint here")
    p.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    p.add_argument("--frames", type=int, default=None, help="image blocks (frames) per row")
    p.add_argument("--frame-hw", default=None, help="frame height,width in pixels")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens per row")
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    p.add_argument("--attention", default=None, help="jax attention_impl (default auto; cpu xla)")
    p.add_argument("--torch-attention", default="auto", help="auto: flash_attention_2, else sdpa")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out", default=None, help="JSON results (--tiny writes only with --out)")
    p.add_argument("--commit", default=None, help="commit to record when the tree has no .git")
    args = p.parse_args()

    frames, hw, text, new_tokens, repeats = DEFAULTS["tiny" if args.tiny else "full"]
    frames = args.frames or frames
    hw = tuple(int(x) for x in (args.frame_hw or hw).split(","))
    text = args.text_tokens or text
    new_tokens = args.new_tokens or new_tokens
    repeats = args.repeats or repeats
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("float32" if on_cpu else "bfloat16")
    attn = args.attention or ("xla" if on_cpu else "auto")
    batches = [int(b) for b in args.batch.split(",")]
    size = "tiny" if args.tiny else ("3b" if args.model is None else Path(args.model).name)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else Path(args.workdir or tmp) / f"random_{size}"
        if args.model is None and not (path / "config.json").exists():
            t0 = time.perf_counter()
            # Tiny: an untied head, since a tied random one repeats the last token.
            cfg = C.tiny(tie_word_embeddings=False) if args.tiny else C.qwen2_5_vl_3b()
            write_random_hf_checkpoint(cfg, path, dtype=dtype, seed=0)
            print(f"random checkpoint in {time.perf_counter() - t0:.0f}s: {path}", flush=True)
        cfg = C.from_hf_json(path)
        inputs = {b: prompts(cfg, b, frames, hw, text) for b in batches}
        torch_r, torch_tokens, torch_info = {}, {}, None
        if not args.skip_torch:
            torch_r, torch_tokens, torch_info = run_torch(
                path, inputs, new_tokens, repeats, dtype, args.torch_attention
            )
            release_torch()
        jax_r, jax_tokens = run_jax(path, inputs, new_tokens, repeats, dtype, attn)

    rows = []
    for b in batches:
        mask = inputs[b]["attention_mask"]
        row = {
            "batch": b,
            "seq_len": int(mask.shape[1]),
            "prompt_tokens": int(mask.sum()),
            "vision_patches": int(inputs[b]["pixel_values"].shape[0]),
            "jax": jax_r[b],
        }
        if b in torch_r:
            j, t = jax_r[b], torch_r[b]
            row["torch"] = t
            row["speedup"] = {
                "prefill": t["prefill_s"] / j["prefill_s"],
                "decode": (
                    j["decode_tokens_per_s"] / t["decode_tokens_per_s"]
                    if j["decode_tokens_per_s"] and t["decode_tokens_per_s"]
                    else None
                ),
            }
            row["greedy_tokens"] = agreement(jax_tokens[b], torch_tokens[b])
        rows.append(row)

    kind = jax.devices()[0].device_kind
    record = {
        "what": "greedy generation, prefill (time to first token) and decode tokens/s",
        "timing": "host arrays to host tokens, median of repeats after one warm-up; "
        "decode = batch*(new_tokens-1)/(full run - one-token run)",
        "speedup": "prefill: torch s / jax s; decode: jax / torch tokens/s (>1: jax faster)",
        "device": kind,
        "torch_side": torch_info,
        "platform": platform.platform(),
        **git_commit(args.commit),
        **versions(not args.skip_torch),
        "model": args.model or f"random {size} (write_random_hf_checkpoint)",
        "dtype": dtype,
        "jax_attention": attn,
        "frames": frames,
        "frame_hw": hw,
        "text_tokens": text,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "results": rows,
    }
    print(json.dumps(record, indent=2))
    name = "cpu" if on_cpu else kind.lower().replace(" ", "_")
    out = args.out
    if out is None and not args.tiny:
        out = REPO / "bench" / "results" / f"generate_{size}_{name}.json"
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
