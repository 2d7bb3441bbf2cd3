"""Training-step throughput: tempura-jax vs transformers (torch), same shapes.

A Qwen2.5-VL-3B-shaped model with random weights at TEMPURA's shapes: 1 FPS
frames of 336x196 (each its own image block, 84 merged tokens), about 60
frames, a short prompt and a reply, batch 2 per device, one device. Both
sides run bf16 compute with gradient checkpointing, AdamW and the same
token/patch counts; torch uses its best available attention
(flash_attention_2, else sdpa). Reports step time, tokens/s and MFU (model
FLOPs from `tempura_jax.train.flops`, the same count for both sides).

    python bench/train_step.py                      # GPU: 3B shapes, attention auto vs xla
    python bench/train_step.py --size tiny --frames 4 --steps 2   # CPU check
    python bench/train_step.py --size tiny --frames 8 --vision-bounds run,none --rounds 3

`--vision-bounds` sets the vision attention's segment bounds per JAX side:
`run` (the trainer's: windows from the config, frames from the pixel budget),
`batch` (this batch's tightest), `none` (dense N x N per sample, as before #9).
`--rounds` repeats every side round-robin (a shared machine's load drifts)
and reports the median of the rounds.

Each side (torch, then JAX per attention implementation) runs in its own
process with the whole device; the results file is rewritten after each, and
a side that fails (the dense `xla` reference out of memory, say) is recorded
with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The parent only reads the device kind; children take the device one at a time.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from tempura_jax import config as C  # noqa: E402
from tempura_jax.data.batching import VISION_KEYS  # noqa: E402
from tempura_jax.data.chat import IGNORE  # noqa: E402
from tempura_jax.data.processor import PixelConfig, max_frame_patches  # noqa: E402
from tempura_jax.model.inputs import prepare_inputs  # noqa: E402
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from tempura_jax.model.vision_geometry import config_bounds  # noqa: E402
from tempura_jax.ops.block_local import describe, static_bound  # noqa: E402
from tempura_jax.sharding import make_mesh, model_shardings  # noqa: E402
from tempura_jax.train.config import ModelSetup  # noqa: E402
from tempura_jax.train.flops import batch_flops, peak_flops  # noqa: E402
from tempura_jax.train.optim import OptimConfig, transform  # noqa: E402
from tempura_jax.train.step import StepFns, batch_shardings  # noqa: E402

SIZES = {"3b": C.qwen2_5_vl_3b, "tiny": C.tiny}
PROMPT, REPLY = 48, 192  # text tokens around the frames; the reply carries the loss


def sample(cfg: C.ModelConfig, frames: int, hw: tuple[int, int], seed: int):
    """One TEMPURA-style sample: prompt, per-frame image blocks, reply."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    gh, gw = hw[0] // v.patch_size, hw[1] // v.patch_size
    per_frame = gh * gw // v.merge_unit
    block = (
        [cfg.vision_start_token_id] + [cfg.image_token_id] * per_frame + [cfg.vision_end_token_id]
    )
    special = min(cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id)
    text = lambda n: rng.integers(0, min(special, 150000), n).tolist()  # noqa: E731
    prompt, reply = text(PROMPT), text(REPLY)
    ids = np.array([prompt + block * frames + reply], np.int64)
    labels = np.full_like(ids, IGNORE)
    labels[0, -REPLY:] = reply
    grid = np.array([[1, gh, gw]] * frames)
    pixels = rng.standard_normal((frames * gh * gw, v.patch_dim)).astype(np.float32)
    return ids, labels, pixels, grid


def jax_batch(cfg, ids, labels, pixels, grid, batch: int) -> dict[str, np.ndarray]:
    """The data pipeline's batch layout (vision arrays with a batch axis)."""
    inp = prepare_inputs(cfg, ids, pixel_values=pixels, image_grid_thw=grid)
    one = {
        "input_ids": inp.input_ids,
        "segment_ids": inp.segment_ids,
        "labels": labels.astype(np.int32),
        "num_image_tokens": np.array([int(inp.num_image_tokens)], np.int32),
        **{k: np.asarray(getattr(inp.vision, k))[None] for k in VISION_KEYS},
    }
    out = {k: np.repeat(a, batch, axis=0) for k, a in one.items()}
    out["position_ids"] = np.repeat(np.asarray(inp.position_ids), batch, axis=1)
    return out


def vision_bounds(mode: str, cfg, batch_np) -> tuple[int | None, int | None]:
    if mode == "run":
        return config_bounds(cfg.vision, max_frame_patches(PixelConfig()))
    if mode == "batch":
        return static_bound(batch_np["window_segments"]), static_bound(batch_np["frame_segments"])
    if mode == "none":
        return None, None
    raise ValueError(f"--vision-bounds: unknown {mode!r} (run, batch, none)")


def run_jax(cfg, batch_np, steps: int, warmup: int, bounds_mode: str = "run") -> dict:
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = model_shardings(abstract, mesh)
    state = jax.jit(
        lambda: nnx.split(Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))[1], out_shardings=shardings
    )()
    tx = transform(OptimConfig(warmup_ratio=0.0), 1000)
    empty = nnx.State({})
    chunk = ModelSetup().loss_chunk  # the trainer's default
    bounds = vision_bounds(bounds_mode, cfg, batch_np)
    fns = StepFns.build(graphdef, state, tx, mesh, "fsdp", chunk, vision_bounds=bounds)
    opt = fns.init_opt(state)
    sh = batch_shardings(batch_np, mesh)
    batch = {k: jax.device_put(v, sh[k]) for k, v in batch_np.items()}
    times = []
    with jax.set_mesh(mesh):
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            state, opt, m = fns.step(state, empty, opt, batch)  # the trainer's accum == 1 path
            loss = float(m["loss"])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {
        "step_time": float(np.median(times)),
        "loss": loss,
        "attention": cfg.attention_impl,
        "vision_bounds": {
            "mode": bounds_mode,
            "window": describe(bounds[0]),
            "frame": describe(bounds[1]),
        },
        "loss_impl": f"chunked logits ({chunk} positions per row per block)",
    }


def run_torch(cfg, ids, labels, pixels, grid, batch: int, steps: int, warmup: int, dtype: str):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    # Its best attention: flash-attn 2 where installed (CUDA only), else SDPA
    # (whose CUDA backend is itself a flash kernel for bf16).
    try:
        import flash_attn  # noqa: F401

        attn = "flash_attention_2" if device == "cuda" else "sdpa"
    except ImportError:
        attn = "sdpa"
    hf = Qwen2_5_VLConfig(**C.to_hf_dict(cfg))
    # fp32 master weights and AdamW state with bf16 autocast: the JAX side's precision.
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        hf, attn_implementation=attn, dtype=torch.float32
    ).to(device)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    inputs = {
        "input_ids": torch.tensor(np.repeat(ids, batch, 0), device=device),
        "attention_mask": torch.ones((batch, ids.shape[1]), dtype=torch.long, device=device),
        "labels": torch.tensor(np.repeat(labels, batch, 0), device=device),
        "pixel_values": torch.tensor(np.tile(pixels, (batch, 1)), device=device),
        "image_grid_thw": torch.tensor(np.tile(grid, (batch, 1)), device=device),
    }
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=tdtype, enabled=tdtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = float(loss.detach())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "step_time": float(np.median(times)),
        "loss": lv,
        "attention": attn,
        "device": device,
        "torch": torch.__version__,
    }


def child(args) -> dict:
    """One side in this (fresh) process: `torch` or `jax:<attention_impl>`."""
    cfg, ids, labels, pixels, grid, batch_np, dtype = setup(args)
    side, _, rest = args.child.partition(":")
    if side == "torch":
        return run_torch(cfg, ids, labels, pixels, grid, args.batch, args.steps, args.warmup, dtype)
    impl, _, bounds = rest.partition(":")
    return run_jax(cfg.replace(attention_impl=impl), batch_np, args.steps, args.warmup, bounds)


def setup(args):
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("float32" if on_cpu else "bfloat16")
    hw = tuple(int(x) for x in args.frame_hw.split(","))
    cfg = SIZES[args.size]().replace(
        param_dtype="float32",
        compute_dtype=dtype,
        remat_decoder=args.remat,
        remat_vision=args.remat,
    )
    ids, labels, pixels, grid = sample(cfg, args.frames, hw, 0)
    batch_np = jax_batch(cfg, ids, labels, pixels, grid, args.batch)
    return cfg, ids, labels, pixels, grid, batch_np, dtype


def run_child(side: str, argv: list[str], timeout: float) -> dict:
    """A side in a child process, so each starts with the whole device (JAX
    keeps the memory it grew; a 3B step needs most of an 80 GB GPU) and an
    out-of-memory or crash is recorded for that side only."""
    cmd = [sys.executable, __file__, *argv, "--child", side]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode:
        lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
        return {"error": " | ".join(lines[-3:])[-1500:], "returncode": r.returncode}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="3b")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--frame-hw", default="196,336", help="frame height,width in pixels")
    p.add_argument("--batch", type=int, default=2, help="samples per device")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    p.add_argument("--remat", default="full", help="remat policy for both towers (jax)")
    p.add_argument(
        "--attention",
        default=None,
        help="comma list of attention_impl values to time (default: auto,xla; cpu: xla)",
    )
    p.add_argument(
        "--vision-bounds", default="run", help="comma list of run, batch, none (see above)"
    )
    p.add_argument("--rounds", type=int, default=1, help="round-robin repeats of every side")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per side")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/...)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, argv = p.parse_args(), sys.argv[1:]
    if args.child:
        print(json.dumps(child(args)))
        return

    on_cpu = jax.default_backend() == "cpu"
    cfg, ids, _, _, _, batch_np, dtype = setup(args)
    hw = tuple(int(x) for x in args.frame_hw.split(","))
    flops = batch_flops(batch_np, cfg)
    tokens = int(batch_np["input_ids"].size)
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    name = "cpu" if on_cpu else kind.lower().replace(" ", "_")
    out = Path(
        args.out or Path(__file__).parent / "results" / f"train_step_{args.size}_{name}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def summary(side: str, r: dict) -> dict:
        if "error" in r:
            return r
        if side == "torch" and not on_cpu and r.get("device") != "cuda":
            # A CPU torch build next to a GPU JAX would "win" by a meaningless margin.
            return {**r, "error": f"torch ran on {r.get('device')}, JAX on {kind}: not comparable"}
        t = r["step_time"]
        return {**r, "tokens_per_s": tokens / t, "mfu": flops / (t * peak) if peak else None}

    impls = (args.attention or ("xla" if on_cpu else "auto,xla")).split(",")
    modes = args.vision_bounds.split(",")
    jax_sides = [f"jax:{impl}:{mode}" for mode in modes for impl in impls]
    sides = ([] if args.no_torch else ["torch"]) + jax_sides
    results: dict = {"jax_by_attention": {}, "jax_by_vision_bounds": {m: {} for m in modes}}
    record = {
        "what": "one training step (forward, backward, AdamW), batch per device, one device",
        "device": kind,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "size": args.size,
        "frames": args.frames,
        "frame_hw": hw,
        "batch": args.batch,
        "seq_len": int(ids.shape[1]),
        "tokens_per_step": tokens,
        "model_flops_per_step": flops,
        "compute_dtype": dtype,
        "remat": args.remat,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "timing": "median step wall time after warm-up (compilation excluded); "
        "each side in its own process; with rounds, the median over the rounds",
        "rounds": args.rounds,
        "results": results,
    }
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            r = summary(side, run_child(side, argv, args.timeout))
            r["load_avg_1m_after"] = os.getloadavg()[0]  # a shared machine's load
            print(f"{side}: {json.dumps(r)}", flush=True)
            if "step_time" in r and "error" not in r:
                times[side].append(r["step_time"])
                r = summary(side, {**r, "step_time": float(np.median(times[side]))})
                r["step_times_by_round"] = times[side]
            if side == "torch":
                results["torch"] = r
            else:
                _, impl, mode = side.split(":")
                results["jax_by_vision_bounds"][mode][impl] = r
                if mode == modes[0]:
                    results["jax_by_attention"][impl] = r
            results["jax"] = results["jax_by_attention"].get(impls[0], {"error": "not run"})
            ok = [results.get("torch", {}), results["jax"]]
            if all("step_time" in x and "error" not in x for x in ok):
                results["speedup"] = ok[0]["step_time"] / ok[1]["step_time"]
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2))  # after every side: partial runs keep
            tmp.replace(out)
    print(json.dumps(record, indent=2))
    # The reference attention running out of memory is a result; the main sides failing is not.
    failed = [k for k in ("torch", "jax") if "error" in results.get(k, {})]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}; see {out}")


if __name__ == "__main__":
    main()
