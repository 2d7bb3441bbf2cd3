"""The event timeline as a PNG: predicted events (or windows, highlight
clips) on one row, the ground truth on another, over the video's seconds."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PREDICTED, TRUTH, MASK = "#d9534f", "#2b7bba", "#999999"


def _spans(parsed: dict[str, Any]) -> list[tuple[float, float, str]]:
    if parsed.get("events"):
        return [(float(a), float(b), str(c)) for a, b, c in parsed["events"]]
    if parsed.get("windows"):
        return [(float(a), float(b), "") for a, b in parsed["windows"]]
    if parsed.get("highlights"):  # (seconds, score): 2-second clips
        return [(float(h[0]), float(h[0]) + 2.0, f"{h[1]:g}") for h in parsed["highlights"]]
    return []


def timeline_png(
    duration: float,
    parsed: dict[str, Any],
    truth: list[list[Any]],
    mask: tuple[float, float] | None = None,
) -> bytes:
    rows = [("predicted", _spans(parsed), PREDICTED)]
    if truth:
        rows.append(("ground truth", [(float(a), float(b), str(c)) for a, b, c in truth], TRUTH))
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.8 * len(rows)), dpi=100)
    for y, (_, spans, colour) in enumerate(rows):
        for i, (a, b, caption) in enumerate(spans):
            ax.barh(y, max(b - a, 0.05), left=a, height=0.6, color=colour,
                    alpha=0.55 + 0.35 * (i % 2), edgecolor="white")  # fmt: skip
            room = int((b - a) / max(duration, 1e-3) * 120)  # characters that fit the bar
            if caption and room > 2:
                text = caption if len(caption) <= room else caption[: room - 1] + "…"
                ax.text(a + 0.1, y, text, va="center", fontsize=7, clip_on=True)
    if mask is not None:
        ax.axvspan(mask[0], mask[1], color=MASK, alpha=0.25, label="masked")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, max(duration, 1e-3))
    ax.set_xlabel("seconds")
    ax.invert_yaxis()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
