"""Ask a checkpoint about videos; one JSON line per answer, with its parsed events.

    python launch/infer.py --checkpoint workdir/demo/stage2/checkpoints \\
        --video workdir/demo/data/videos/demo_000.mp4              # dense captions
    python launch/infer.py --checkpoint CKPT --video V --task grounding --query "a man sits"
    python launch/infer.py --checkpoint CKPT --video V --task masked --mask 10,14
    python launch/infer.py --checkpoint CKPT --batch cases.json --out answers.jsonl

Tasks: dense (default), masked (--mask START,END seconds), grounding and
highlight (--query), free (--query is the whole prompt). A cases file is a
JSON list of {video, task, query, mask, clip, id}; relative videos are read
from its folder. Frames, stamps and the pixel budget come from the
checkpoint's training config; `key=value` overrides them (`sampling.fps=2`).
"""

from __future__ import annotations

import argparse
import json
import sys

from tempura_jax.inference import infer, tasks


def _pair(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",")]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run checkpoints, a step, or an HF dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file or frame folder")
    src.add_argument("--batch", help="a JSON list of cases")
    p.add_argument("--task", choices=sorted(tasks.TASKS), help="default: dense, free with --query")
    p.add_argument("--query", default="")
    p.add_argument("--mask", help="START,END seconds blanked (masked task)")
    p.add_argument("--clip", help="START,END seconds of the video to use")
    p.add_argument("--out", help="append JSON lines here instead of stdout")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    infer.add_model_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tempura_jax.inference.generate import SamplingConfig

    try:
        if args.batch:
            cases = infer.read_cases(args.batch)
        else:
            raw = {"video": args.video, "task": args.task, "query": args.query, "id": "0"}
            raw.update(mask=_pair(args.mask), clip=_pair(args.clip))
            cases = [infer.Case.from_json(raw, "command line")]
        sampling = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        args.batch_size = max(1, min(args.batch_size, len(cases)))  # no idle copies
        predictor = infer.load_from_arguments(args, sampling)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115
    failed = 0
    try:
        for pred in predictor.run(cases):
            failed += pred.error is not None
            out.write(json.dumps(pred.to_json()) + "\n")
            out.flush()
    finally:
        if args.out:
            out.close()
    if failed:
        print(f"{failed} of {len(cases)} cases could not be run (see 'error')", file=sys.stderr)
    return 1 if failed == len(cases) else 0


if __name__ == "__main__":
    sys.exit(main())
