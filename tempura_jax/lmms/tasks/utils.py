"""lmms-eval hooks of TEMPURA's tasks: prompts from `tempura_jax.inference.tasks`, answers
parsed and rows written by `tempura_jax.eval.benchmarks`, and the scores of
`launch/eval.py` (the same functions, so the two agree on every number).

A doc is one case of a benchmark (`task_folder.write_task_folder` writes them):
`{id, video, query, clip, bench, task, annotations, videos}`; `task` is the
prompt the protocol picked (`grounding`, `vtg`, `vhd_ft`, ...).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from tempura_jax.eval import benchmarks
from tempura_jax.inference import tasks
from tempura_jax.inference.infer import Case, Prediction

log = logging.getLogger(__name__)


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return tasks.get(doc["task"]).text(doc.get("query") or "")


def _case(doc: dict) -> Case:
    clip = tuple(doc["clip"]) if doc.get("clip") else None
    return Case(
        video=doc["video"], task=doc["task"], query=doc.get("query") or "", clip=clip, id=doc["id"]
    )


@functools.lru_cache(maxsize=8)
def _context(bench: str, annotations: str) -> dict[str, Any]:
    return benchmarks.get(bench).context(Path(annotations))


def process_results(doc: dict, results: list[str]) -> dict[str, dict]:
    """The benchmark's submission row for this answer, under every metric name."""
    answer = results[0]
    bench = benchmarks.get(doc["bench"])
    case = _case(doc)
    pred = Prediction(
        case.id, case.video, case.task, case.query, answer, tasks.get(case.task).parse(answer)
    )
    row = bench.row(case, pred, _context(bench.name, doc["annotations"]))
    item = {
        "row": row,
        "bench": bench.name,
        "annotations": doc["annotations"],
        "videos": doc["videos"],
    }
    return {name: item for name in METRICS[bench.name]}


@functools.lru_cache(maxsize=16)
def _scores(key: str, protocol: str) -> dict[str, Any]:
    items = json.loads(key)
    first = items[0]
    bench = benchmarks.get(first["bench"])
    rows = [i["row"] for i in items]
    opts = {"protocol": protocol, "partial": True, "captions": True}
    return bench.score(rows, Path(first["annotations"]), Path(first["videos"]), opts)


def _aggregate(metric: str, protocol: str = "first"):
    def aggregate(items: list[dict]) -> float:
        scores = _scores(json.dumps(items, sort_keys=True), protocol)
        value = scores.get(metric)
        if not isinstance(value, (int, float)):
            log.warning("%s: %s", metric, scores.get("captions", "not computed"))
            return math.nan
        return float(value)

    aggregate.__name__ = f"aggregate_{metric}_{protocol}"
    return aggregate


# metric name in lmms-eval -> (benchmark metric key, Charades protocol)
METRICS: dict[str, dict[str, tuple[str, str]]] = {
    "charades": {
        f"{key}_{protocol}": (key, protocol)
        for protocol in ("first", "any")
        for key in ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7")
    },
    "qvhighlights": {
        key: (key, "first")
        for key in (
            "HL-min-VeryGood-mAP",
            "HL-min-VeryGood-Hit1",
            "MR-full-mAP",
            "MR-full-R1@0.5",
            "MR-full-R1@0.7",
        )
    },
    "dvc": {
        key: (key, "first")
        for key in ("F1", "Recall", "Precision", "events_per_video", "CIDEr", "METEOR")
    },
}


def aggregation_name(bench: str, metric: str) -> str:
    """The YAMLs' `!function utils.<name>` of one metric's aggregation."""
    return "agg_" + re.sub(r"\W", "_", f"{bench}_{metric}")


AGGREGATIONS = {
    aggregation_name(bench, name): _aggregate(key, protocol)
    for bench, metrics in METRICS.items()
    for name, (key, protocol) in metrics.items()
}
globals().update(AGGREGATIONS)
