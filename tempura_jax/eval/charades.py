"""Charades-STA temporal grounding: annotations and metrics.

Metrics are mIoU and R@1 at IoU 0.3/0.5/0.7, x100, over every query: an
answer without a window counts with IoU 0; reversed windows are swapped;
nothing is clipped to the video length. Protocol `first` scores the first
predicted window (strict top-1); `any` the best of all predicted windows
(TEMPURA's later protocol). The protocol is part of the result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

PROTOCOLS = ("first", "any")
THRESHOLDS = (0.3, 0.5, 0.7)


@dataclasses.dataclass(frozen=True)
class Query:
    video: str
    start: float
    end: float
    sentence: str


def read_annotations(path: str | Path) -> list[Query]:
    """Lines `VID start end##sentence`; a bad line is an error naming file and line."""
    queries = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        fields = head.split()
        try:
            if not sep or len(fields) != 3:
                raise ValueError("expected 'VID start end##sentence'")
            start, end = float(fields[1]), float(fields[2])
        except ValueError as e:
            raise ValueError(f"{path}:{i}: {e}: {line!r}") from None
        queries.append(Query(fields[0], start, end, sentence.strip()))
    return queries


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    (s1, e1), (s2, e2) = sorted(a), sorted(b)
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = max(e1, e2) - min(s1, s2)
    return inter / union if union > 0 else 0.0


def query_iou(pred: list[tuple[float, float]], gt: tuple[float, float], protocol: str) -> float:
    if not pred:
        return 0.0
    if protocol == "first":
        return iou(pred[0], gt)
    return max(iou(p, gt) for p in pred)


def metrics(
    predictions: list[list[tuple[float, float]]],
    ground_truth: list[tuple[float, float]],
    protocol: str = "first",
) -> dict:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} queries")
    pairs = zip(predictions, ground_truth, strict=True)
    ious = np.array([query_iou(p, g, protocol) for p, g in pairs])
    out = {"protocol": protocol, "queries": len(ious), "unparsed": sum(not p for p in predictions)}
    out["mIoU"] = float(100 * ious.mean()) if len(ious) else 0.0
    for t in THRESHOLDS:
        out[f"R1@{t}"] = float(100 * (ious >= t).mean()) if len(ious) else 0.0
    return out
