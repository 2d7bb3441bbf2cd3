"""Validation and repair of a model's event boundaries (paper Sec. 4: events
must not overlap, must cover the whole video, and must lie inside it).

Repairs are small and explicit: clip to [0, duration], snap the ends within
`tol` of the video's ends, close gaps and overlaps of at most `tol` seconds at
their midpoint. Anything else is left for `data.events.event_problems` to
reject, with its reason, so a bad segmentation is re-asked or dropped rather
than silently reshaped."""

from __future__ import annotations

from tempura_jax.annotate.answers import InvalidAnswer
from tempura_jax.data.events import Event, event_problems


class InvalidEvents(InvalidAnswer):
    """Event boundaries that cannot be repaired; the message says why."""


def repair_events(spans: list[list[float]], duration: float, tol: float = 1.0) -> list[list[float]]:
    """[[start, end], ...] seconds, repaired and rounded to 0.1 s; raises
    InvalidEvents naming the first problem left."""
    if not spans:
        raise InvalidEvents("no events")
    clipped = []
    for start, end in sorted((float(a), float(b)) for a, b in spans):
        start, end = max(0.0, start), min(duration, end)
        if end - start > 1e-6:  # an event wholly outside the video is dropped
            clipped.append([start, end])
    if not clipped:
        raise InvalidEvents(f"every event lies outside the video (0 to {duration:.1f} s)")
    if clipped[0][0] <= tol:
        clipped[0][0] = 0.0
    if clipped[-1][1] >= duration - tol:
        clipped[-1][1] = duration
    for prev, cur in zip(clipped[:-1], clipped[1:], strict=True):
        if abs(cur[0] - prev[1]) <= tol:
            mid = (cur[0] + prev[1]) / 2
            prev[1] = cur[0] = mid
    out = [[round(a, 1), round(b, 1)] for a, b in clipped]
    problems = event_problems([Event(a, b, "-") for a, b in out], round(duration, 1), tol=1e-6)
    if problems:
        raise InvalidEvents(problems[0])
    return out
