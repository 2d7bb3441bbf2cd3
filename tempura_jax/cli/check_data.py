"""Report every problem in a data set without training.

Reads each record, its video or frame folder, checks events and mask windows,
decodes and stamps the sampled frames, and (with --tokenizer) builds the full
token sequence against the sequence budget. Prints one line per problem and a
JSON summary; exits 1 if any record is unusable.

    python launch/check_data.py --data data/demo/stage2_dense.json --media-root data/demo
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tempura_jax.config import from_hf_json, qwen2_5_vl_3b
from tempura_jax.data.config import TASKS, VISUAL_MODES, DataConfig
from tempura_jax.data.media import Sampling
from tempura_jax.data.records import Problem, Record, load_records
from tempura_jax.data.sample import ExampleBuilder, SampleError
from tempura_jax.data.tokenizer import Tokenizer

_BUILDER: ExampleBuilder | None = None


def _init(cfg: DataConfig, model_json: str | None) -> None:
    """Token ids come from --model-config, else from the tokenizer itself
    (the 3B geometry: merge size and tokens per second)."""
    global _BUILDER
    tok = Tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    model_cfg = from_hf_json(model_json) if model_json else qwen2_5_vl_3b()
    if tok is not None and model_json is None:
        model_cfg = model_cfg.replace(
            image_token_id=tok.image_pad_id,
            video_token_id=tok.video_pad_id,
            vision_start_token_id=tok.vision_start_id,
            vision_end_token_id=tok.vision_end_id,
        )
    _BUILDER = ExampleBuilder(cfg, tok, model_cfg)


def _check(rec: Record) -> tuple[str, Problem | None, int]:
    try:
        if _BUILDER.tok is None:
            frames, _, _ = _BUILDER.frames(rec)
            return rec.source, None, 0
        ex = _BUILDER.build(rec)
        return rec.source, None, ex.num_tokens
    except SampleError as e:
        return rec.source, Problem(e.source, e.reason, e.detail), 0
    except Exception as e:  # noqa: BLE001 - an audit reports everything
        return rec.source, Problem(rec.source, "error", f"{type(e).__name__}: {e}"), 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="VER JSON / JSONL files")
    p.add_argument("--media-root", required=True, help="root of the records' media paths")
    p.add_argument("--tokenizer", default="", help="HF tokenizer dir: also check token budgets")
    p.add_argument("--model-config", default=None, help="HF config.json whose token ids to use")
    p.add_argument("--task", choices=TASKS, default="auto")
    p.add_argument("--visual-mode", choices=VISUAL_MODES, default="frames")
    p.add_argument("--fps", type=float, default=Sampling.fps)
    p.add_argument("--max-frames", type=int, default=Sampling.max_frames)
    p.add_argument("--max-seq-len", type=int, default=DataConfig.max_seq_len)
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, help="parallel checker processes")
    p.add_argument("--report", default=None, help="also write problems here (JSON lines)")
    a = p.parse_args(argv)

    cfg = DataConfig(
        data=tuple(a.data),
        media_root=a.media_root,
        tokenizer=a.tokenizer,
        task=a.task,
        visual_mode=a.visual_mode,
        max_seq_len=a.max_seq_len,
        sampling=Sampling(fps=a.fps, max_frames=a.max_frames),
    )
    if a.min_pixels or a.max_pixels:
        lo = a.min_pixels or min(cfg.pixels.min_pixels, a.max_pixels)
        hi = a.max_pixels or max(cfg.pixels.max_pixels, a.min_pixels)
        if lo > hi:
            p.error(f"--min-pixels {lo} is above --max-pixels {hi}")
        cfg = cfg.replace(pixels=dataclasses.replace(cfg.pixels, min_pixels=lo, max_pixels=hi))
    records, problems, seen = load_records(list(cfg.data), cfg.media_root)
    tokens = []
    if a.workers > 1:
        with ProcessPoolExecutor(
            a.workers, initializer=_init, initargs=(cfg, a.model_config)
        ) as ex:
            results = list(ex.map(_check, records, chunksize=4))
    else:
        _init(cfg, a.model_config)
        results = [_check(r) for r in records]
    for _, problem, n in results:
        if problem is not None:
            problems.append(problem)
        elif n:
            tokens.append(n)
    for problem in problems:
        print(problem)
    if a.report:
        Path(a.report).write_text(
            "".join(
                json.dumps({"source": q.source, "reason": q.reason, "detail": q.detail}) + "\n"
                for q in problems
            )
        )
    summary = {
        "records": seen,
        "usable": seen - len([q for q in problems if "#" in q.source]),
        "problems": dict(collections.Counter(q.reason for q in problems)),
        "unreadable_files": [q.source for q in problems if "#" not in q.source],
    }
    if tokens:
        summary["tokens"] = {
            "min": min(tokens),
            "max": max(tokens),
            "mean": round(sum(tokens) / len(tokens), 1),
        }
    print(json.dumps(summary, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
