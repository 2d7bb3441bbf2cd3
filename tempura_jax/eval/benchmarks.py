"""Benchmarks as data: how each reads its annotation file into cases, writes a
prediction row in its submission format, and scores a prediction file.

Every row carries an `id` (the case id) so a run can resume by skipping the
ids already written. Charades-STA has no official submission format: rows are
`{id, vid, query, answer, windows}`. QVHighlights rows are the official
evaluator's `{qid, query, vid, pred_relevant_windows, pred_saliency_scores}`
(plus `id`, `answer` and `windows_from`, which it ignores). Dense captioning rows are
`{id, video, answer, events}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tempura_jax.data.events import Event, parse_events
from tempura_jax.data.records import load_records
from tempura_jax.eval import charades, dvc, qvhighlights
from tempura_jax.eval.jsonl import read_objects
from tempura_jax.eval.parsing import parse_windows
from tempura_jax.inference import tasks
from tempura_jax.inference.infer import Case, Prediction


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    task: str  # the `tasks` prompt it runs
    annotations: str  # the official file name
    max_new_tokens: int
    # (annotation file, video folder, video suffix) -> cases
    cases: Callable[[Path, Path, str], list[Case]]
    # (case, prediction, context) -> submission row
    row: Callable[[Case, Prediction, dict[str, Any]], dict[str, Any]]
    # (rows, annotation file, video folder, options) -> metrics
    score: Callable[[list[dict], Path, Path, dict[str, Any]], dict[str, Any]]
    # annotation file -> what rows need beyond the case (QVHighlights: qid, duration)
    context: Callable[[Path], dict[str, Any]] = lambda ann: {}
    # like `score`, but everything the official evaluator reports, the brief
    # metrics under "brief" (QVHighlights: per threshold, per length range)
    detailed: Callable[[list[dict], Path, Path, dict[str, Any]], dict[str, Any]] | None = None


# The reference's generation budgets under its own prompts (JSON answers are longer).
PAPER_MAX_NEW_TOKENS = {"charades": 512, "qvhighlights": 256}


def max_new_tokens(bench: Benchmark, protocol: str = "ours") -> int:
    if protocol == "ours":
        return bench.max_new_tokens
    return PAPER_MAX_NEW_TOKENS.get(bench.name, bench.max_new_tokens)


def with_protocol(cases: list[Case], protocol: str) -> list[Case]:
    """The cases with each task swapped for its `protocol` prompt (`tasks.PROTOCOLS`)."""
    return [dataclasses.replace(c, task=tasks.for_protocol(c.task, protocol)) for c in cases]


def scores(
    bench: Benchmark, rows: list[dict], ann: Path, videos: Path, opts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(brief metrics, detailed metrics): the same object where a benchmark has no detail."""
    if bench.detailed is None:
        brief = bench.score(rows, ann, videos, opts)
        return brief, brief
    full = bench.detailed(rows, ann, videos, opts)
    return full["brief"], full


def _by_id(rows: list[dict], ids: list[str], path_hint: str, partial: bool) -> list[dict | None]:
    """Rows in annotation order; a missing id is an error unless `partial`."""
    have = {str(r.get("id")): r for r in rows}
    missing = [i for i in ids if i not in have]
    if missing and not partial:
        raise ValueError(
            f"{path_hint}: {len(missing)} of {len(ids)} queries have no prediction "
            f"(first: {missing[:3]}); finish the run or pass --partial"
        )
    return [have.get(i) for i in ids]


# -- Charades-STA ------------------------------------------------------------------------


def _charades_cases(ann: Path, videos: Path, ext: str) -> list[Case]:
    return [
        Case(video=str(videos / f"{q.video}{ext}"), task="grounding", query=q.sentence, id=str(i))
        for i, q in enumerate(charades.read_annotations(ann))
    ]


def _charades_row(case: Case, pred: Prediction, ctx: dict) -> dict[str, Any]:
    vid = Path(case.video).stem
    windows = pred.parsed.get("windows", [])
    return {
        "id": case.id,
        "vid": vid,
        "query": case.query,
        "answer": pred.answer,
        "windows": windows,
    }


def _charades_score(rows: list[dict], ann: Path, videos: Path, opts: dict) -> dict[str, Any]:
    queries = charades.read_annotations(ann)
    picked = _by_id(rows, [str(i) for i in range(len(queries))], str(ann), opts.get("partial"))
    preds, gts = [], []
    for q, r in zip(queries, picked, strict=True):
        if r is None:
            continue
        windows = r.get("windows")
        if windows is None:  # a row from elsewhere with only the answer text
            windows = parse_windows(r.get("answer"))
        preds.append([tuple(w[:2]) for w in windows])
        gts.append((q.start, q.end))
    return charades.metrics(preds, gts, opts.get("protocol", "first"))


# -- QVHighlights ------------------------------------------------------------------------


def _qvh_cases(ann: Path, videos: Path, ext: str) -> list[Case]:
    return [
        Case(
            video=str(videos / f"{g['vid']}{ext}"),
            task="highlight",
            query=g["query"],
            id=str(g["qid"]),
        )
        for g in qvhighlights.read_jsonl(ann, "ground_truth")
    ]


def _qvh_context(ann: Path) -> dict[str, Any]:
    return {
        str(g["qid"]): (g["qid"], float(g["duration"]))
        for g in qvhighlights.read_jsonl(ann, "ground_truth")
    }


# The model is asked only for highlight timestamps: its moment-retrieval windows are
# the runs of clips with a positive predicted score (`qvhighlights.submission_record`).
QVH_WINDOWS_NOTE = "MR windows are runs of positive predicted highlight clips"


def _qvh_row(case: Case, pred: Prediction, ctx: dict) -> dict[str, Any]:
    qid, duration = ctx[case.id]
    row = qvhighlights.submission_record(
        qid, duration, highlights=pred.parsed.get("highlights", [])
    )
    return {
        "id": case.id,
        "query": case.query,
        "vid": Path(case.video).stem,
        **row,
        "answer": pred.answer,
        "windows_from": "highlights",  # ignored by the official evaluator
    }


def _qvh_detailed(rows: list[dict], ann: Path, videos: Path, opts: dict) -> dict[str, Any]:
    """The official detailed metrics; says so when the windows came from highlight clips."""
    gt = qvhighlights.read_jsonl(ann, "ground_truth")
    out = qvhighlights.detailed(rows, gt, match_number=not opts.get("partial"))
    if any(r.get("windows_from") == "highlights" for r in rows):
        out["brief"]["MR-windows"] = out["MR-windows"] = QVH_WINDOWS_NOTE
    return out


def _qvh_score(rows: list[dict], ann: Path, videos: Path, opts: dict) -> dict[str, Any]:
    return _qvh_detailed(rows, ann, videos, opts)["brief"]


# -- dense captioning ----------------------------------------------------------------------


def _dvc_records(ann: Path, root: Path):
    records, problems, _ = load_records([ann], root)
    if problems:
        raise ValueError(f"{problems[0]} ({len(problems)} bad records in {ann})")
    return [(r.source.rsplit("#", 1)[1], r) for r in records]


def _dvc_cases(ann: Path, root: Path, ext: str) -> list[Case]:
    return [
        Case(video=r.media, task="dense", clip=r.clip, id=i) for i, r in _dvc_records(ann, root)
    ]


def _dvc_row(case: Case, pred: Prediction, ctx: dict) -> dict[str, Any]:
    return {
        "id": case.id,
        "video": case.video,
        "answer": pred.answer,
        "events": pred.parsed.get("events", []),
    }


def _dvc_score(rows: list[dict], ann: Path, root: Path, opts: dict) -> dict[str, Any]:
    records = _dvc_records(ann, root)
    picked = _by_id(rows, [i for i, _ in records], str(ann), opts.get("partial"))
    videos = []
    for (i, rec), row in zip(records, picked, strict=True):
        if row is None:
            continue
        truth = parse_events(rec.target)
        if not truth:
            raise ValueError(f"{rec.source}: the reference answer has no events")
        events = row.get("events")
        predicted = (
            [Event(float(a), float(b), str(c)) for a, b, c in events]
            if events is not None
            else parse_events(row.get("answer") or "")
        )
        # Dense annotations cover the whole video: its length is the last event's end.
        videos.append(dvc.Video(i, truth[-1].end, tuple(truth), tuple(predicted)))
    return dvc.metrics(videos, captions=opts.get("captions", True))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "charades", "grounding", "charades_sta_test.txt", 64,
            _charades_cases, _charades_row, _charades_score,
        ),
        Benchmark(
            "qvhighlights", "highlight", "highlight_val_release.jsonl", 192,
            _qvh_cases, _qvh_row, _qvh_score, _qvh_context, _qvh_detailed,
        ),
        Benchmark("dvc", "dense", "VER JSON", 512, _dvc_cases, _dvc_row, _dvc_score),
    )
}  # fmt: skip


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def read_rows(path: Path) -> list[dict]:
    """A prediction file (JSON lines); a bad line is an error naming file:line."""
    return read_objects(path)
