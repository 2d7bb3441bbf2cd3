"""The event timeline: predicted events (or windows, highlight clips) on one
row, the ground truth on another, over the video's seconds; as a matplotlib
figure (the page's plot) and as table rows (the same spans, readable)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

PREDICTED, TRUTH, MASK = "#d9534f", "#2b7bba", "#999999"
HIGHLIGHT_CLIP = 2.0  # seconds: a highlight is a QVHighlights clip at its start time

Span = tuple[float, float, str]


def predicted_spans(parsed: dict[str, Any]) -> list[Span]:
    """A task's parsed answer as (start, end, label) spans."""
    if parsed.get("events"):
        return [(float(a), float(b), str(c)) for a, b, c in parsed["events"]]
    if parsed.get("windows"):
        return [(float(a), float(b), "") for a, b in parsed["windows"]]
    if parsed.get("highlights"):  # (seconds, score)
        return [(float(t), float(t) + HIGHLIGHT_CLIP, f"{s:g}") for t, s in parsed["highlights"]]
    return []


def timeline_rows(parsed: dict[str, Any], truth: list[list[Any]]) -> list[tuple[str, list[Span]]]:
    """(row name, spans): "predicted" always, "ground truth" when there is one."""
    rows = [("predicted", predicted_spans(parsed))]
    if truth:
        rows.append(("ground truth", [(float(a), float(b), str(c)) for a, b, c in truth]))
    return rows


def table_rows(parsed: dict[str, Any], truth: list[list[Any]]) -> list[list[Any]]:
    """[row, start, end, label] per span, predicted first."""
    return [
        [name, round(a, 2), round(b, 2), label]
        for name, spans in timeline_rows(parsed, truth)
        for a, b, label in spans
    ]


def timeline_figure(
    duration: float,
    parsed: dict[str, Any],
    truth: list[list[Any]],
    mask: tuple[float, float] | None = None,
) -> Figure:
    """A Figure of its own (not pyplot's registry), so concurrent requests and
    long sessions neither share nor leak state."""
    rows = timeline_rows(parsed, truth)
    fig = Figure(figsize=(9, 0.9 + 0.8 * len(rows)), dpi=100)
    ax = fig.subplots()
    width = max(duration, 1e-3)
    for y, (name, spans) in enumerate(rows):
        colour = PREDICTED if name == "predicted" else TRUTH
        for i, (a, b, label) in enumerate(spans):
            ax.barh(y, max(b - a, 0.05), left=a, height=0.6, color=colour,
                    alpha=0.55 + 0.35 * (i % 2), edgecolor="white")  # fmt: skip
            room = int((b - a) / width * 120)  # characters that fit the bar
            if label and room > 2:
                text = label if len(label) <= room else label[: room - 1] + "…"
                ax.text(a + 0.1, y, text, va="center", fontsize=7, clip_on=True)
    if mask is not None:
        ax.axvspan(mask[0], mask[1], color=MASK, alpha=0.25, label="masked")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, width)
    ax.set_xlabel("seconds")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
