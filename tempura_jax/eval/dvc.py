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

Captions follow ActivityNet's dense-captioning evaluator (densevid_eval): at
each threshold every predicted event is paired with every ground-truth event it
overlaps by at least the threshold, or with a garbage reference if it overlaps
none; captions lose non-ASCII characters and go through PTBTokenizer; each
scorer (Bleu_1..4, METEOR, ROUGE_L, CIDEr) scores each video on its own pairs
(so CIDEr's document frequencies are per video), a video without predicted
events scores 0, and the score is the mean over videos, then over thresholds,
x100. They need pycocoevalcap and a `java` binary (its tokenizer and METEOR
are Java); without them the result says why they were skipped.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import string
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


def remove_nonascii(text: str) -> str:
    """Characters past ASCII become spaces, as the official evaluator does before tokenizing."""
    return "".join(c if ord(c) < 128 else " " for c in text)


def garbage_caption(rng: random.Random) -> str:
    """A reference no caption can match: 10-20 uppercase letters/digits. The official
    evaluator draws it from the unseeded global RNG; a seeded one keeps scores reproducible."""
    alphabet = string.ascii_uppercase + string.digits
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 20)))


def caption_pairs(video: Video, threshold: float, rng: random.Random) -> list[tuple[str, str]]:
    """(predicted caption, reference) pairs of one video at `threshold`: each prediction
    with every ground truth it overlaps enough, or with garbage if none."""
    pairs = []
    for p in video.predicted:
        refs = [g.caption for g in video.truth if tiou(p, g) >= threshold]
        refs = refs or [garbage_caption(rng)]
        pairs += [(remove_nonascii(p.caption), remove_nonascii(r)) for r in refs]
    return pairs


def _threshold_scores(
    videos: list[Video], threshold: float, scorers: list, tokenizer: Any, rng: random.Random
) -> dict[str, float]:
    """Metric name -> mean over videos of each video's score at one threshold."""
    per_video = [caption_pairs(v, threshold, rng) for v in videos]
    flat = [pair for pairs in per_video for pair in pairs]
    res, gts = {}, {}
    if flat:  # no predicted events anywhere: every video scores 0, no tokenizer run
        res = tokenizer.tokenize({i: [{"caption": p}] for i, (p, _) in enumerate(flat)})
        gts = tokenizer.tokenize({i: [{"caption": g}] for i, (_, g) in enumerate(flat)})
    out: dict[str, float] = {}
    for scorer, names in scorers:
        scores, first = [], 0
        for pairs in per_video:
            keys = range(first, first + len(pairs))
            first += len(pairs)
            if not pairs:
                scores.append([0.0] * len(names))
                continue
            score, _ = scorer.compute_score({k: gts[k] for k in keys}, {k: res[k] for k in keys})
            scores.append(list(score) if len(names) > 1 else [score])
        out.update(zip(names, np.mean(np.array(scores, dtype=float), axis=0), strict=True))
    return out


def caption_metrics(videos: list[Video], seed: int = 0) -> dict[str, Any]:
    """Bleu_1..4/METEOR/ROUGE_L/CIDEr x100 as densevid_eval computes them, or why
    they were skipped; `seed` draws the garbage references."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return {"captions": "skipped: pycocoevalcap is not installed"}
    if shutil.which("java") is None:
        return {"captions": "skipped: no java binary (pycocoevalcap's tokenizer and METEOR)"}
    scorers = [
        (Bleu(4), ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")),
        (Meteor(), ("METEOR",)),
        (Rouge(), ("ROUGE_L",)),
        (Cider(), ("CIDEr",)),
    ]
    rng = random.Random(seed)
    per_threshold = [_threshold_scores(videos, t, scorers, PTBTokenizer(), rng) for t in THRESHOLDS]
    return {
        name: 100 * float(np.mean([s[name] for s in per_threshold]))
        for _, names in scorers
        for name in names
    }


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
