"""Parsers for model answers. They never raise: unparseable text yields nothing.

Times may be seconds (`12`, `12.5s`, `12.5 seconds`) or clock times (`1:05`,
`0:01:05.5`). A window is `[a, b]` (also inside nested JSON lists),
`from a to b`, `between a and b`, `a - b` or `a to b`; windows come back in the
order they appear, unswapped (metrics decide what a reversed window means).
"""

from __future__ import annotations

import math
import re

_NUM = r"\d+(?:\.\d+)?"
_CLOCK = r"(?:\d+:)?\d{1,2}:\d{2}(?:\.\d+)?"
_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"
TIME = rf"(?:{_CLOCK}|{_NUM}){_UNIT}"

WINDOW = re.compile(
    rf"\[\s*(?P<l1>{TIME})\s*,\s*(?P<l2>{TIME})\s*\]"
    rf"|\bfrom\s+(?P<f1>{TIME})\s+(?:to|until|till)\s+(?P<f2>{TIME})"
    rf"|\bbetween\s+(?P<b1>{TIME})\s+and\s+(?P<b2>{TIME})"
    rf"|(?P<d1>{TIME})\s*(?:-|–|—|to)\s*(?P<d2>{TIME})",
    re.IGNORECASE,
)
_PAIRS = (("l1", "l2"), ("f1", "f2"), ("b1", "b2"), ("d1", "d2"))


def to_seconds(token: str) -> float | None:
    """`12.5`, `12.5s`, `1:05`, `1:02:03.5` -> seconds; None if not a time."""
    token = re.sub(r"[a-zA-Z\s]+$", "", token.strip())
    try:
        parts = [float(p) for p in token.split(":")]
    except ValueError:
        return None
    if not parts or len(parts) > 3 or any(p < 0 for p in parts):
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds if math.isfinite(seconds) else None


def parse_windows(text: str | None) -> list[tuple[float, float]]:
    """Every time window in `text`, in order of appearance."""
    out = []
    for m in WINDOW.finditer(text or ""):
        for a, b in _PAIRS:
            if m.group(a) is not None:
                start, end = to_seconds(m.group(a)), to_seconds(m.group(b))
                if start is not None and end is not None:
                    out.append((start, end))
                break
    return out


# A highlight pair: `82s: 1.3`, `1:22 - score 2`, `82 seconds (score 1.3)`. The time is
# atomic so a clock `12:30` is never re-read as the pair `12: 30`.
_SCORE = rf"-?{_NUM}"
_PAIR_SEP = r"\s*(?::|,?\s*-?\s*\(?\s*(?:saliency\s+)?score\s*(?:of|is|[:=])?)\s*"
HIGHLIGHT_PAIR = re.compile(rf"(?P<t>(?>{TIME})){_PAIR_SEP}(?P<s>{_SCORE})", re.IGNORECASE)
_SCORES_WORD = re.compile(r"\bscores?\b", re.IGNORECASE)


def _finite(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_highlights(text: str | None) -> list[tuple[float, float]]:
    """(time seconds, saliency score) pairs, in order of appearance.

    Explicit pairs win. Otherwise TimeChat's two lists ("...timestamps are in
    the 82, 84 seconds. Their saliency scores are 1.3, 1.7.") are zipped
    positionally, up to the shorter list: times are read before the last
    "score(s)" word and scores after it. Without scores (or without times
    before that word), every time found gets score 1.0, so a bare list of
    times still marks highlights.
    """
    if not isinstance(text, str):
        return []
    pairs = []
    for m in HIGHLIGHT_PAIR.finditer(text):
        t, s = to_seconds(m.group("t")), _finite(m.group("s"))
        if t is not None and s is not None:
            pairs.append((t, s))
    if pairs:
        return pairs
    words = list(_SCORES_WORD.finditer(text))
    head, tail = (text[: words[-1].start()], text[words[-1].end() :]) if words else (text, "")
    times = _times(head)
    scores = [s for s in map(_finite, re.findall(_SCORE, tail)) if s is not None]
    if not times:
        times, scores = _times(text), []
    if not scores:
        return [(t, 1.0) for t in times]
    return list(zip(times, scores, strict=False))


def _times(text: str) -> list[float]:
    return [t for t in map(to_seconds, re.findall(TIME, text, re.IGNORECASE)) if t is not None]
