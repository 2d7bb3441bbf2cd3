"""Evaluate a checkpoint on a benchmark, or score an existing prediction file.

    # run the model, write predictions in the benchmark's format, then score
    python launch/eval.py --task dvc --checkpoint workdir/demo/stage2/checkpoints \\
        --annotations workdir/demo/data/stage2_dense.json --videos workdir/demo/data \\
        --predictions workdir/demo/eval/dvc.jsonl --out workdir/demo/eval/dvc.json
    python launch/eval.py --task charades --checkpoint CKPT \\
        --annotations charades_sta_test.txt --videos Charades_v1_480 --predictions p.jsonl
    # score only (no --checkpoint)
    python launch/eval.py --task qvhighlights --predictions submission.jsonl \\
        --annotations highlight_val_release.jsonl

Tasks: charades (charades_sta_test.txt; `--protocol first|any`), qvhighlights
(highlight_val_release.jsonl; official submission rows), dvc (VER JSON dense
records; `--videos` is their media root). A run resumes: ids already in
--predictions are skipped. The metrics go to stdout as one JSON object and to
--out (qvhighlights: the official detailed object, per IoU threshold, length
range and saliency level, with the brief metrics under "brief"); progress and
logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tempura_jax import infer  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", required=True, choices=("charades", "qvhighlights", "dvc"))
    p.add_argument("--annotations", required=True, type=Path)
    p.add_argument("--predictions", required=True, type=Path, help="JSON lines, appended")
    p.add_argument("--checkpoint", help="run the model first (else only score)")
    p.add_argument("--videos", type=Path, help="video folder (default: the annotations' folder)")
    p.add_argument("--ext", default=".mp4", help="video suffix after the id (charades, qvh)")
    p.add_argument(
        "--out", type=Path, help="also write the metrics here (qvhighlights: the detailed ones)"
    )
    p.add_argument("--protocol", default="first", choices=("first", "any"), help="charades")
    p.add_argument("--partial", action="store_true", help="score only the queries predicted")
    p.add_argument("--limit", type=int, help="run only the first N queries (implies --partial)")
    p.add_argument("--no-captions", action="store_true", help="dvc: skip caption metrics")
    p.add_argument("--max-new-tokens", type=int, help="default: per task")
    infer.add_model_arguments(p)
    return p


def resume_rows(path: Path) -> list[dict]:
    """Rows already written; a last line cut off by a kill is dropped so the
    file stays valid JSON lines and that query is run again."""
    from tempura_jax.eval.benchmarks import read_rows

    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        print(f"{path}: dropping a cut-off last line", file=sys.stderr)
        path.write_bytes(keep)
    return read_rows(path)


def run(args, bench, videos: Path) -> None:
    from tqdm import tqdm

    from tempura_jax.generate import SamplingConfig

    cases = bench.cases(args.annotations, videos, args.ext)[: args.limit]
    done = {str(r.get("id")) for r in resume_rows(args.predictions)}
    todo = [c for c in cases if c.id not in done]
    print(f"{bench.name}: {len(cases)} queries, {len(cases) - len(todo)} done", file=sys.stderr)
    if not todo:
        return
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens or bench.max_new_tokens)
    args.batch_size = min(args.batch_size, len(todo))  # no idle copies in a short run
    predictor = infer.load_from_arguments(args, sampling)
    context = bench.context(args.annotations)
    args.predictions.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with args.predictions.open("a") as f, tqdm(total=len(todo), file=sys.stderr) as bar:
        by_id = {c.id: c for c in todo}
        for pred in predictor.run(todo, progress=bar.update):
            failed += pred.error is not None
            row = bench.row(by_id[pred.id], pred, context)
            if pred.error:
                row["error"] = pred.error
            f.write(json.dumps(row) + "\n")
            f.flush()
    if failed:
        print(f"{failed} queries could not be run (rows with 'error')", file=sys.stderr)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tempura_jax.eval import benchmarks

    bench = benchmarks.get(args.task)
    videos = args.videos or args.annotations.parent
    try:
        if args.checkpoint:
            run(args, bench, videos)
        elif not args.predictions.exists():
            raise ValueError(f"{args.predictions}: no such prediction file (give --checkpoint)")
        rows = resume_rows(args.predictions)
        opts = {
            "protocol": args.protocol,
            "partial": args.partial or args.limit is not None,
            "captions": not args.no_captions,
        }
        brief, detailed = benchmarks.scores(bench, rows, args.annotations, videos, opts)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        write_atomic(args.out, json.dumps(detailed, indent=2) + "\n")
    print(json.dumps(brief, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
