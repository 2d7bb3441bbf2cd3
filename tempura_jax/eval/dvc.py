"""Dense video captioning: structure, localisation and (with Java) caption metrics.

Structure, per video then averaged: events, coverage (share of the video
inside the union of predicted events, clipped to the video), overlap (seconds
covered by more than one event, over the duration), and the share of answers
that are a valid TEMPURA annotation (ordered, non-overlapping, covering the
video: `data.events.event_problems`). An answer without events counts with
zero events and zero coverage.

Localisation, ActivityNet dense-captioning style, at tIoU 0.3/0.5/0.7/0.9:
recall is the share of ground-truth events some prediction overlaps by at
least the threshold, precision the share of predictions that overlap some
ground-truth event; both per video, then averaged.

Captions (BLEU-4, METEOR, CIDEr via pycocoevalcap) score every (prediction,
ground truth) pair matched at each threshold, averaged over thresholds. They
need pycocoevalcap and a `java` binary (its tokenizer and METEOR are Java);
without them the result says why they were skipped.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import numpy as np

from tempura_jax.data.events import Event, event_problems

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


@dataclasses.dataclass(frozen=True)
class Video:
    id: str
    duration: float
    truth: tuple[Event, ...]
    predicted: tuple[Event, ...]


def tiou(a: Event, b: Event) -> float:
    inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
    union = max(a.end, b.end) - min(a.start, b.start)
    return inter / union if union > 0 else 0.0


def _clipped(events, duration: float) -> list[tuple[float, float]]:
    spans = [(max(0.0, min(e.start, e.end)), min(duration, max(e.start, e.end))) for e in events]
    return sorted((a, b) for a, b in spans if b > a)


def coverage(events, duration: float) -> float:
    """Share of [0, duration] inside the union of the events."""
    covered, reach = 0.0, 0.0
    for a, b in _clipped(events, duration):
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return covered / duration if duration > 0 else 0.0


def overlap(events, duration: float) -> float:
    """Seconds covered by two or more events, over the duration."""
    points = sorted(
        [(a, 1) for a, _ in _clipped(events, duration)]
        + [(b, -1) for _, b in _clipped(events, duration)]
    )
    depth, last, multi = 0, 0.0, 0.0
    for t, step in points:
        if depth >= 2:
            multi += t - last
        depth, last = depth + step, t
    return multi / duration if duration > 0 else 0.0


def localisation(video: Video, threshold: float) -> tuple[float, float]:
    """(recall, precision) of one video's predicted events at `threshold`."""
    if not video.predicted:
        return 0.0, 0.0
    m = np.array([[tiou(p, g) for g in video.truth] for p in video.predicted])
    hit = m >= threshold
    recall = float(hit.any(axis=0).mean()) if video.truth else 0.0
    return recall, float(hit.any(axis=1).mean())


def matched_pairs(videos: list[Video], threshold: float) -> list[tuple[str, str]]:
    """(predicted caption, true caption) for every pair overlapping by >= threshold."""
    return [
        (p.caption, g.caption)
        for v in videos
        for p in v.predicted
        for g in v.truth
        if tiou(p, g) >= threshold
    ]


def caption_metrics(videos: list[Video]) -> dict[str, Any]:
    """BLEU-4/METEOR/CIDEr x100 averaged over thresholds, or why they were skipped."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return {"captions": "skipped: pycocoevalcap is not installed"}
    if shutil.which("java") is None:
        return {"captions": "skipped: no java binary (pycocoevalcap's tokenizer and METEOR)"}
    scorers = {"BLEU-4": (Bleu(4), 3), "METEOR": (Meteor(), None), "CIDEr": (Cider(), None)}
    sums = dict.fromkeys(scorers, 0.0)
    for t in THRESHOLDS:
        pairs = matched_pairs(videos, t)
        if not pairs:
            continue  # no match at this threshold scores 0, as in ActivityNet's evaluator
        res = {i: [{"caption": p}] for i, (p, _) in enumerate(pairs)}
        gts = {i: [{"caption": g}] for i, (_, g) in enumerate(pairs)}
        tok = PTBTokenizer()
        res, gts = tok.tokenize(res), tok.tokenize(gts)
        for name, (scorer, pick) in scorers.items():
            score, _ = scorer.compute_score(gts, res)
            sums[name] += float(score[pick] if pick is not None else score)
    return {name: 100 * s / len(THRESHOLDS) for name, s in sums.items()}


def metrics(videos: list[Video], tol: float = 1.0, captions: bool = True) -> dict[str, Any]:
    if not videos:
        raise ValueError("no videos to score")
    out: dict[str, Any] = {"videos": len(videos)}
    out["events_per_video"] = float(np.mean([len(v.predicted) for v in videos]))
    out["gt_events_per_video"] = float(np.mean([len(v.truth) for v in videos]))
    out["coverage"] = float(np.mean([coverage(v.predicted, v.duration) for v in videos]))
    out["overlap"] = float(np.mean([overlap(v.predicted, v.duration) for v in videos]))
    out["valid"] = float(
        np.mean([not event_problems(list(v.predicted), v.duration, tol) for v in videos])
    )
    out["unparsed"] = sum(not v.predicted for v in videos)
    recalls, precisions = [], []
    for t in THRESHOLDS:
        r, p = np.mean([localisation(v, t) for v in videos], axis=0)
        out[f"Recall@{t}"], out[f"Precision@{t}"] = 100 * float(r), 100 * float(p)
        recalls.append(r)
        precisions.append(p)
    r, p = float(np.mean(recalls)), float(np.mean(precisions))
    out["Recall"], out["Precision"] = 100 * r, 100 * p
    out["F1"] = 100 * 2 * r * p / (r + p) if r + p > 0 else 0.0
    if captions:
        out.update(caption_metrics(videos))
    return out
