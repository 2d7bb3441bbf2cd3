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

`--prompts tempura_paper` sends the reference's byte-identical VTG / VHD_FT prompts
(`tempura_paper_ft`: VTG_FT) with its token budgets; `--refine` adds its second,
text-only pass with the video's dense caption (tempura_jax/eval/refine.py). The
metrics name the protocol that made them (`"prompts"`).

Tasks: charades (charades_sta_test.txt; `--protocol first|any`), qvhighlights
(highlight_val_release.jsonl; official submission rows), dvc (VER JSON dense
records; `--videos` is their media root). A run resumes: ids already in
--predictions are skipped and rows that carry an `error` run again.
<predictions>.meta.json records what produced them (checkpoint and a
fingerprint of its files, task, annotations, sampling, data overrides, dtype,
attention); a run with other settings refuses to resume (`--overwrite` starts
over). The metrics go to stdout as one JSON object and to --out (qvhighlights:
the official detailed object, per IoU threshold, length range and saliency
level, with the brief metrics under "brief"); progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from tempura_jax.inference import infer


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
    p.add_argument(
        "--prompts",
        default="ours",
        choices=("ours", "tempura_paper", "tempura_paper_ft"),
        help="prompt protocol (charades, qvhighlights): ours, or the reference's byte-identical "
        "VTG / VTG_FT and VHD_FT prompts (recorded with the metrics)",
    )
    p.add_argument(
        "--refine",
        choices=("vtg_first", "refined", "vtg"),
        help="charades, qvhighlights: the reference's second, text-only pass with the video's "
        "dense caption; for charades, which windows count (vtg_first: the reference's)",
    )
    p.add_argument("--partial", action="store_true", help="score only the queries predicted")
    p.add_argument("--limit", type=int, help="run only the first N queries (implies --partial)")
    p.add_argument("--no-captions", action="store_true", help="dvc: skip caption metrics")
    p.add_argument("--max-new-tokens", type=int, help="default: per task")
    p.add_argument(
        "--overwrite", action="store_true", help="discard --predictions and run every query again"
    )
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


def drop_failed_rows(path: Path) -> list[dict]:
    """Rows without an `error`; failed rows are removed from the file so their
    queries run again and the file keeps one row per id."""
    rows = resume_rows(path)
    good = [r for r in rows if "error" not in r]
    if len(good) < len(rows):
        print(f"{path}: retrying {len(rows) - len(good)} rows with an error", file=sys.stderr)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in good))
    return good


def meta_path(predictions: Path) -> Path:
    return predictions.with_name(predictions.name + ".meta.json")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def checkpoint_identity(path: str) -> dict[str, str]:
    """The step directory a run reads and a fingerprint of its files (names,
    sizes, modification times; no reading of the weights), so retraining to the
    same step still reads as a different checkpoint. Copying without times
    does too: then `--overwrite`."""
    from tempura_jax import checkpoint

    root = Path(path).resolve()
    if checkpoint.is_checkpoint(root):
        root = checkpoint.step_dir(root).resolve()
    h = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"checkpoint": str(root), "checkpoint_files": h.hexdigest()[:16]}


def run_settings(args: argparse.Namespace, bench: Any, sampling: Any) -> dict[str, Any]:
    """What decides the answers in --predictions (not batch size or --limit)."""
    return {
        "task": bench.name,
        "prompts": args.prompts,
        "refine": args.refine,
        **checkpoint_identity(args.checkpoint),
        "tokenizer": args.tokenizer,
        "annotations": file_digest(args.annotations),
        **{f"sampling.{k}": v for k, v in dataclasses.asdict(sampling).items()},
        "data_overrides": list(args.overrides),
        "dtype": args.dtype,
        "attention": args.attention,
    }


def check_resume(predictions: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Start over (`overwrite`), or resume only predictions made with `settings`;
    records them for the next run."""
    meta = meta_path(predictions)
    settings = json.loads(json.dumps(settings))  # as read back: lists, not tuples
    if overwrite:
        predictions.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
    has_rows = predictions.exists() and predictions.stat().st_size > 0
    if has_rows and not meta.exists():
        raise ValueError(
            f"{predictions}: no {meta.name} says what made these predictions; "
            "pass --overwrite to start over"
        )
    if has_rows:
        saved = json.loads(meta.read_text())
        diff = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        if diff:
            said = "; ".join(f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
            raise ValueError(
                f"{predictions} was made with other settings ({said}); "
                "pass --overwrite to start over, or another --predictions"
            )
    write_atomic(meta, json.dumps(settings, indent=2) + "\n")


def run(args, bench, videos: Path) -> None:
    from tempura_jax.eval.benchmarks import max_new_tokens, with_protocol
    from tempura_jax.inference.generate import SamplingConfig

    cases = with_protocol(bench.cases(args.annotations, videos, args.ext), args.prompts)
    cases = cases[: args.limit]
    budget = args.max_new_tokens or max_new_tokens(bench, args.prompts)
    sampling = SamplingConfig(max_new_tokens=budget)
    check_resume(args.predictions, run_settings(args, bench, sampling), args.overwrite)
    done = {str(r.get("id")) for r in drop_failed_rows(args.predictions)}
    todo = [c for c in cases if c.id not in done]
    print(f"{bench.name}: {len(cases)} queries, {len(cases) - len(todo)} done", file=sys.stderr)
    predictor = first_pass(args, bench, todo, sampling) if todo else None
    if args.refine:
        second_pass(args, bench, cases, predictor, sampling)


def first_pass(args, bench, todo: list, sampling):
    """Answers for `todo`, appended to --predictions; returns the Predictor."""
    from tqdm import tqdm

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
        print(
            f"{failed} queries could not be run (rows with 'error'; a rerun retries them)",
            file=sys.stderr,
        )
    return predictor


def second_pass(args, bench, cases: list, predictor, sampling) -> None:
    """The reference's text-only refinement (`eval/refine.py`) of every row not
    yet refined; --predictions is rewritten with the final windows/highlights,
    the first `answer` and the `refine_answer` (so a rerun resumes here too)."""
    from tempura_jax.eval import refine

    rows = resume_rows(args.predictions)
    by_id = {c.id: c for c in cases}
    todo = [
        r for r in rows if str(r.get("id")) in by_id and not {"error", "refine_answer"} & set(r)
    ]
    print(f"{bench.name}: refining {len(todo)} answers", file=sys.stderr)
    if not todo:
        return
    if predictor is None:
        args.batch_size = min(args.batch_size, len(todo))
        predictor = infer.load_from_arguments(args, sampling)
    picked = [by_id[str(r["id"])] for r in todo]
    context = bench.context(args.annotations)
    durations = [context[c.id][1] for c in picked] if bench.name == "qvhighlights" else None
    answers = [r.get("answer") for r in todo]
    extra = refine.refine(predictor, picked, answers, durations, mode=args.refine)
    new = {}
    for case, row, more in zip(picked, todo, extra, strict=True):
        parsed = {k: more.pop(k) for k in ("windows", "highlights") if k in more}
        pred = infer.Prediction(
            case.id, case.video, case.task, case.query, row.get("answer"), parsed
        )
        new[case.id] = {**bench.row(case, pred, context), **more}
    text = "".join(json.dumps(new.get(str(r.get("id")), r)) + "\n" for r in rows)
    write_atomic(args.predictions, text)


def recorded_prompts(args) -> str:
    """The prompt protocol that made --predictions (its sidecar's, else the
    flags'), `+refine` when the second pass made the final answers."""
    meta = meta_path(args.predictions)
    saved = json.loads(meta.read_text()) if meta.exists() else vars(args)
    prompts = saved.get("prompts") or "ours"
    return f"{prompts}+refine" if saved.get("refine") else prompts


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tempura_jax.eval import benchmarks

    bench = benchmarks.get(args.task)
    if args.refine and bench.name == "dvc":
        print("error: --refine is for charades and qvhighlights", file=sys.stderr)
        return 2
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
        # the prompt protocol goes with every number
        said = {"prompts": recorded_prompts(args)}
        if detailed is brief:
            brief = detailed = {**brief, **said}
        else:
            brief = {**brief, **said}
            detailed = {**detailed, **said, "brief": brief}
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        write_atomic(args.out, json.dumps(detailed, indent=2) + "\n")
    print(json.dumps(brief, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
