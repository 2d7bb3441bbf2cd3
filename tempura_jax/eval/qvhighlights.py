"""QVHighlights moment retrieval (MR) and highlight detection (HL) metrics.

Scores the moment_detr JSONL submission format with the semantics of its
standalone evaluator (`standalone_eval/eval.py`), so numbers are comparable
with published ones. Where the official script would crash this raises a
ValueError naming the query instead (or, for a length range without queries,
reports None; duplicate qids and non-finite predicted numbers are errors too),
with two deliberate widenings:

- a relevant clip id >= int(duration / 2) (odd durations: the last, partial
  clip) grows the ground-truth saliency matrix to max(id) + 1 rows; results
  are identical whenever the official script does not crash;
- a ground-truth matrix with no rows scores AP 0 (the official asserts).

Ties between equal IoUs visit the higher ground-truth index first (the
reverse of a stable ascending argsort, as the official's default argsort
orders them with numpy 1.x; numpy 2's SIMD sort on AVX-512 CPUs may not, so
there the official itself depends on the machine). Queries are averaged in
submission order in one process (the official averages in worker completion
order, so the last bit of a mean may differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tempura_jax.eval.jsonl import read_objects

CLIP_SECONDS = 2.0
IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
R1_BRIEF = (0.5, 0.7)
MAX_PRED_WINDOWS = 10
# (lo, hi]: a ground-truth window of length l is kept when lo < l <= hi. `full` keeps everything.
LENGTH_RANGES = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0), "full": None}
SALIENCY_MINS = {"Fair": 2, "Good": 3, "VeryGood": 4}
GT_FIELDS = ("qid", "duration", "relevant_clip_ids", "saliency_scores", "relevant_windows")
WINDOWS, SALIENCY = "pred_relevant_windows", "pred_saliency_scores"


# ---------------------------------------------------------------- loading and checks


def read_jsonl(path: str | Path, what: str) -> list[dict]:
    """Records of a `ground_truth` or `submission` JSONL file, checked line by line.

    Checking here turns the official script's KeyErrors deep inside a metric
    into an error naming file:line and field.
    """
    check = {"ground_truth": check_ground_truth, "submission": check_prediction}.get(what)
    if check is None:
        raise ValueError(f"what must be 'ground_truth' or 'submission', not {what!r}")
    return read_objects(path, check)


def check_ground_truth(record: dict) -> None:
    missing = [f for f in GT_FIELDS if f not in record]
    if missing:
        raise ValueError(f"ground truth lacks field {', '.join(missing)}")
    gt_saliency(record)
    _gt_windows(record)


def check_prediction(record: dict, need: Sequence[str] = ()) -> None:
    """A usable prediction row; `need` names fields that must be present."""
    if "qid" not in record:
        raise ValueError("prediction lacks field qid")
    qid = record["qid"]
    for field in need:
        if field not in record:
            raise ValueError(f"qid {qid!r}: prediction lacks field {field}")
    if WINDOWS not in record and SALIENCY not in record:
        raise ValueError(f"qid {qid!r}: prediction needs field {WINDOWS} or {SALIENCY}")
    if WINDOWS in record:
        _pred_windows(record)
    if SALIENCY in record:
        _pred_saliency(record)


def _array(record: dict, field: str, shape: str) -> np.ndarray:
    try:
        return np.asarray(record[field], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"qid {record.get('qid')!r}: {field} must be {shape}") from None


def _pred_windows(record: dict) -> np.ndarray:
    """(P, 3) [start, end, score] rows; empty is an error since the official reads row 0."""
    w = _array(record, WINDOWS, "a list of [start, end, score]")
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] < 3 or not np.isfinite(w[:, :3]).all():
        raise ValueError(
            f"qid {record['qid']!r}: {WINDOWS} must be a non-empty list of finite "
            f"[start, end, score], got {record[WINDOWS]!r:.200}"
        )
    return w[:, :3]


def _pred_saliency(record: dict) -> np.ndarray:
    s = _array(record, SALIENCY, "a list of numbers")
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
        raise ValueError(
            f"qid {record['qid']!r}: {SALIENCY} must be a non-empty list of finite numbers"
        )
    return s


def _gt_windows(record: dict) -> np.ndarray:
    w = _array(record, "relevant_windows", "a list of [start, end]")
    if w.size == 0:
        return np.zeros((0, 2))
    if w.ndim != 2 or w.shape[1] != 2:
        raise ValueError(f"qid {record['qid']!r}: relevant_windows must be a list of [start, end]")
    return w


def gt_saliency(record: dict) -> np.ndarray:
    """(clips, 3 annotators) scores 0-4; unlisted clips score 0.

    int(duration / 2) rows as in the official, grown to cover a relevant clip
    past that (the official crashes there instead).
    """
    qid = record.get("qid")
    ids = _array(record, "relevant_clip_ids", "a list of clip ids")
    scores = _array(record, "saliency_scores", "a list of [a, b, c] scores")
    if ids.size == 0 and scores.size == 0:
        ids, scores = ids.reshape(0), scores.reshape(0, 3)
    if ids.ndim != 1 or (ids < 0).any() or (ids != np.round(ids)).any():
        raise ValueError(f"qid {qid!r}: relevant_clip_ids must be a list of clip ids >= 0")
    if scores.shape != (len(ids), 3):
        raise ValueError(
            f"qid {qid!r}: saliency_scores must hold 3 scores for each of the {len(ids)} "
            f"relevant clips, got shape {scores.shape}"
        )
    duration = _array(record, "duration", "a number")
    if duration.ndim != 0 or not np.isfinite(duration) or duration < 0:
        raise ValueError(f"qid {qid!r}: duration must be a finite number >= 0")
    ids = ids.astype(int)
    rows = max(int(float(duration) / CLIP_SECONDS), int(ids.max()) + 1 if ids.size else 0)
    matrix = np.zeros((rows, 3))
    matrix[ids] = scores
    return matrix


# ---------------------------------------------------------------- building a submission row


def to_clip(t: float) -> int:
    """Clip of time t: clip k covers [2k, 2k + 2).

    Some pipelines use int(t / 2) - 1 or int((t - 1) / 2), one clip early.
    """
    return math.floor(t / CLIP_SECONDS)


def submission_record(
    qid: Any,
    duration: float,
    windows: Sequence[Sequence[float]] = (),
    highlights: Sequence[tuple[float, float]] = (),
) -> dict:
    """One submission row from parsed model output.

    `windows` are (start, end) or (start, end, score); without a score the
    i-th window scores 1 / (i + 1) so the given order is the ranking. Reversed
    windows are swapped. `highlights` are (time, score): a time's score goes
    to clip floor(t / 2) (the max when several land there); times outside
    [0, duration) are dropped. There are ceil(duration / 2) clip scores, so a
    time in a partial last clip is kept (the scorer truncates like the
    official). Without windows they are derived from runs of clips with a
    positive score; with neither, one window [0, 0, 0] keeps the format
    (>= 1 window) valid and scores IoU 0.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"qid {qid!r}: duration must be positive, got {duration!r}")
    best: dict[int, float] = {}
    for t, s in highlights:
        if 0 <= t < duration and math.isfinite(s):
            k = to_clip(t)
            best[k] = max(best.get(k, s), s)
    scores = [float(best.get(k, 0.0)) for k in range(math.ceil(duration / CLIP_SECONDS))]
    rows = []
    for i, w in enumerate(windows):
        start, end = sorted((float(w[0]), float(w[1])))
        rows.append([start, end, float(w[2]) if len(w) > 2 else 1.0 / (i + 1)])
    if not rows:
        rows = _runs(scores, duration) or [[0.0, 0.0, 0.0]]
    rows.sort(key=lambda r: -r[2])
    return {"qid": qid, WINDOWS: rows, SALIENCY: scores}


def _runs(scores: list[float], duration: float) -> list[list[float]]:
    """[start, end, max score] for each run of clips with a positive score."""
    runs, first = [], None
    for k, s in enumerate([*scores, 0.0]):
        if s > 0 and first is None:
            first = k
        elif s <= 0 and first is not None:
            top = max(scores[first:k])
            runs.append([CLIP_SECONDS * first, min(CLIP_SECONDS * k, float(duration)), top])
            first = None
    return runs


# ---------------------------------------------------------------- highlight detection


def saliency_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP of one annotator's binary clip labels, as the official `get_ap`.

    Scores are cut or zero-padded to the label length. Tied scores form one
    threshold; precision is interpolated from the high-recall end and
    averaged over the thresholds where recall grows. All-negative labels
    score 0, all-positive 1.
    """
    y_true = np.asarray(y_true, dtype=float)
    y_score = np.asarray(y_score, dtype=float)[: len(y_true)]
    y_score = np.pad(y_score, (0, len(y_true) - len(y_score)))
    if not y_true.any():
        return 0.0
    if y_true.all():
        return 1.0
    order = np.argsort(-y_score, kind="stable")
    s, t = y_score[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    grows = np.diff(np.r_[0.0, tp]) != 0
    # low threshold first, the official's (sklearn's) order, so the mean sums identically
    return float(np.mean(interpolated[grows][::-1]))


def highlight_detection(submission: list[dict], ground_truth: list[dict]) -> dict[str, dict]:
    """{"HL-min-Fair": {"HL-mAP", "HL-Hit1"}, ...} over the submission's queries."""
    gt = {r["qid"]: gt_saliency(r) for r in ground_truth}
    preds = [(r["qid"], _pred_saliency(r)) for r in submission]
    out = {}
    for name, min_score in SALIENCY_MINS.items():
        ap = np.zeros((len(preds), 3))
        hit = np.zeros((len(preds), 3))
        for i, (qid, scores) in enumerate(preds):
            labels = (gt[qid] >= min_score).astype(float)
            top = int(np.argmax(scores))  # first index on ties, over the full prediction
            if top < len(labels):
                hit[i] = labels[top]
            for a in range(3):
                ap[i, a] = saliency_ap(labels[:, a], scores)
        out[f"HL-min-{name}"] = {"HL-mAP": _pct(np.mean(ap)), "HL-Hit1": _pct(hit.max(1).mean())}
    return out


# ---------------------------------------------------------------- moment retrieval


def _cross_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of [start, end] rows; 0/0 stays NaN as in the official."""
    inter = np.clip(
        np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 interpolated AP: area under the monotone precision envelope."""
    p = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
    r = np.r_[0.0, recall, 1.0]
    idx = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[idx] - r[idx - 1]) * p[idx]))


def moment_ap(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """AP at each IoU threshold for one query (ActivityNet detection matching).

    `pred` rows are [start, end, score]; the first 10 in given order are
    ranked by score (stable). A prediction takes the best-IoU ground truth not
    yet taken at that threshold, else it is a false positive.
    """
    pred = pred[:MAX_PRED_WINDOWS]
    pred = pred[np.argsort(-pred[:, 2], kind="stable")]
    iou = _cross_iou(pred[:, :2], gt)
    taken = np.zeros((len(IOU_THRESHOLDS), len(gt)), dtype=bool)
    tp = np.zeros((len(IOU_THRESHOLDS), len(pred)))
    for i in range(len(pred)):
        visit = np.argsort(iou[i], kind="stable")[::-1]
        for t, threshold in enumerate(IOU_THRESHOLDS):
            for j in visit:
                if iou[i, j] < threshold:
                    break
                if not taken[t, j]:
                    taken[t, j], tp[t, i] = True, 1.0
                    break
    cum_tp = np.cumsum(tp, axis=1)
    cum_fp = np.cumsum(1.0 - tp, axis=1)
    recall, precision = cum_tp / len(gt), cum_tp / (cum_tp + cum_fp)
    return np.array([_voc_ap(precision[t], recall[t]) for t in range(len(IOU_THRESHOLDS))])


def r1_iou(first: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the top window with the ground truth it overlaps most (first on ties).

    The pair IoU divides by the hull, max(ends) - min(starts), like the official.
    """
    g = gt[int(np.argmax(_cross_iou(first[None, :2], gt)[0]))]
    inter = max(0.0, min(first[1], g[1]) - max(first[0], g[0]))
    hull = max(first[1], g[1]) - min(first[0], g[0])
    return float(inter / hull) if hull != 0 else 0.0


def moment_retrieval(submission: list[dict], ground_truth: list[dict]) -> dict[str, dict]:
    """{range: {"MR-mAP": {thr: x, "average": x}, "MR-R1": {thr: x}, "queries": n}}.

    A range keeps only ground-truth windows of its lengths and the queries
    left with one; a range with no query reports None values.
    """
    gt = {}
    for r in ground_truth:
        gt[r["qid"]] = _gt_windows(r)
        if len(gt[r["qid"]]) == 0:
            raise ValueError(f"qid {r['qid']!r}: no relevant_windows to score moments against")
    preds = [(r["qid"], _pred_windows(r)) for r in submission]
    out = {}
    for name, bounds in LENGTH_RANGES.items():
        kept = gt
        if bounds is not None:
            lo, hi = bounds
            kept = {
                q: w[(lo < w[:, 1] - w[:, 0]) & (w[:, 1] - w[:, 0] <= hi)] for q, w in gt.items()
            }
        queries = [(kept[q], p) for q, p in preds if len(kept[q])]
        keys = [str(t) for t in IOU_THRESHOLDS]
        if not queries:
            out[name] = {
                "MR-mAP": dict.fromkeys([*keys, "average"]),
                "MR-R1": dict.fromkeys(keys),
                "queries": 0,
            }
            continue
        per_threshold = np.array([moment_ap(g, p) for g, p in queries]).mean(0)
        mean_ap = {k: _pct(v) for k, v in zip(keys, per_threshold, strict=True)}
        mean_ap["average"] = _pct(np.mean(per_threshold))
        ious = np.array([r1_iou(p[0], g) for g, p in queries])
        recall = {str(t): _pct(np.mean(ious >= t)) for t in IOU_THRESHOLDS}
        out[name] = {"MR-mAP": mean_ap, "MR-R1": recall, "queries": len(queries)}
    return out


# ---------------------------------------------------------------- the whole evaluation


def _pct(x: float) -> float:
    return float(f"{100 * x:.2f}")


def _few(qids: set) -> str:
    shown = sorted(qids, key=str)[:5]
    return ", ".join(map(repr, shown)) + (", ..." if len(qids) > 5 else "")


def _match(
    submission: list[dict], ground_truth: list[dict], match_number: bool
) -> tuple[list[dict], list[dict]]:
    for what, records in (("submission", submission), ("ground truth", ground_truth)):
        seen: set = set()
        for r in records:
            if r.get("qid") in seen:
                raise ValueError(f"duplicate qid {r['qid']!r} in {what}")
            seen.add(r.get("qid"))
    pred_qids = {r["qid"] for r in submission}
    gt_qids = {r["qid"] for r in ground_truth}
    if match_number and pred_qids != gt_qids:
        missing, extra = gt_qids - pred_qids, pred_qids - gt_qids
        raise ValueError(
            f"qids in ground truth and submission must match: {len(missing)} missing from the "
            f"submission ({_few(missing)}), {len(extra)} not in the ground truth ({_few(extra)}); "
            "use match_number=False to score the shared ones"
        )
    shared = pred_qids & gt_qids
    submission = [r for r in submission if r["qid"] in shared]
    ground_truth = [r for r in ground_truth if r["qid"] in shared]
    if not submission:
        raise ValueError("no query to score: the submission and ground truth share no qid")
    return submission, ground_truth


def detailed(
    submission: list[dict], ground_truth: list[dict], match_number: bool = True
) -> dict[str, Any]:
    """Everything the official reports: "brief" plus per-range MR and per-level HL sections.

    MR is scored when the first submission row has pred_relevant_windows, HL
    when it has pred_saliency_scores (then every row needs them).
    """
    for r in ground_truth:
        check_ground_truth(r)
    submission, ground_truth = _match(submission, ground_truth, match_number)
    need = [f for f in (WINDOWS, SALIENCY) if f in submission[0]]
    for r in submission:
        check_prediction(r, need)
    brief: dict[str, float | None] = {}
    out: dict[str, Any] = {"brief": brief}
    if WINDOWS in need:
        mr = moment_retrieval(submission, ground_truth)
        out.update(mr)
        mr_brief = {
            "MR-full-mAP": mr["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": mr["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": mr["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
            **{f"MR-full-R1@{t}": mr["full"]["MR-R1"][str(t)] for t in R1_BRIEF},
        }
        brief.update(sorted(mr_brief.items()))
    if SALIENCY in need:
        hl = highlight_detection(submission, ground_truth)
        out.update(hl)
        for level, values in hl.items():
            brief.update({f"{level}-{k.split('-')[1]}": v for k, v in values.items()})
    return out


def evaluate(
    submission: list[dict], ground_truth: list[dict], match_number: bool = True
) -> dict[str, float | None]:
    """The official "brief" metrics as one flat dict (percent, 2 decimals).

    With match_number the qid sets must be equal; without, only shared qids count.
    """
    return detailed(submission, ground_truth, match_number)["brief"]
