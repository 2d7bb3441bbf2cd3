"""Timestamped events: the `From A to B seconds, ...` text format, validation, and
stage-1 masked-event samples built from stage-2 dense annotations."""

from __future__ import annotations

import dataclasses
import math
import re

from tempura_jax import reference_prompts

EVENT = re.compile(
    r"From\s+(\d+(?:\.\d+)?)\s+to\s+(\d+(?:\.\d+)?)\s+seconds?\s*[,:]\s*(.*?)\s*"
    r"(?=\n[ \t]*\n|(?:\n\s*)?From\s+\d+(?:\.\d+)?\s+to\s+\d|\Z)",
    re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Event:
    start: float
    end: float
    caption: str

    def format(self) -> str:
        caption = self.caption.strip()
        if caption and caption[-1] not in ".!?":
            caption += "."
        return f"From {self.start:.1f} to {self.end:.1f} seconds, {caption}"


def format_events(events: list[Event]) -> str:
    """Stage-2 target: one paragraph per event, separated by blank lines."""
    return "\n\n".join(e.format() for e in events)


def parse_events(text: str) -> list[Event]:
    """Every `From A to B seconds, caption` in `text`, in order; never raises.
    A caption ends at the next event or blank line (one paragraph per event)."""
    return [
        Event(float(a), float(b), caption.strip())
        for a, b, caption in EVENT.findall(text or "")
        if math.isfinite(float(a)) and math.isfinite(float(b))
    ]


def event_problems(
    events: list[Event], duration: float | None = None, tol: float = 1.0, cover: bool = True
) -> list[str]:
    """Why `events` is not a valid dense annotation (empty list if it is):
    ordered, non-overlapping, non-empty captions, inside [0, duration] and,
    when `cover`, covering it with gaps of at most `tol` seconds."""
    if not events:
        return ["no events"]
    problems = []
    for i, e in enumerate(events):
        if not e.end > e.start:
            problems.append(f"event {i} ends at {e.end} before it starts at {e.start}")
        if not e.caption:
            problems.append(f"event {i} has no caption")
        if i and e.start < events[i - 1].end - tol:
            problems.append(
                f"event {i} starts at {e.start}, before event {i - 1} ends at {events[i - 1].end}"
            )
        if i and cover and e.start > events[i - 1].end + tol:
            problems.append(f"gap of {e.start - events[i - 1].end:.1f} s before event {i}")
    if duration is not None:
        if events[-1].end > duration + tol:
            problems.append(
                f"last event ends at {events[-1].end}, after the video ({duration:.1f} s)"
            )
        if cover and events[-1].end < duration - tol:
            problems.append(f"events end at {events[-1].end}, the video at {duration:.1f} s")
    if cover and events[0].start > tol:
        problems.append(f"first event starts at {events[0].start}, not at 0")
    return problems


MASKED_PROMPT = (
    "The video segment from {start:.1f} to {end:.1f} seconds is masked (black frames). "
    "Based on the events before and after it, infer what happens in the masked segment "
    "and explain your reasoning step by step."
)
DENSE_PROMPT = (
    "Segment the video into non-overlapping events that cover the whole video, and describe "
    "each event in detail with its start and end time in seconds, one paragraph per event, "
    "in the form: From A to B seconds, description."
)


def reference_template(prompt: str) -> str:
    """A reference prompt as a `str.format` template: its `<start>`/`<end>`
    placeholders become `{start:.1f}`/`{end:.1f}`, the precision of the
    stage-1 answers (`masked_answer`); every other character is kept."""
    escaped = prompt.replace("{", "{{").replace("}", "}}")
    return escaped.replace("<start>", "{start:.1f}").replace("<end>", "{end:.1f}")


# The reference's wording (`reference_prompts`, byte for byte): what the released
# checkpoints were trained on, so the default of the demo data, VER annotation
# and inference. PROMPTS["project"] is this project's earlier, shorter wording.
REF_DENSE_PROMPT = reference_template(reference_prompts.DVC)
REF_MASKED_PROMPT = reference_template(reference_prompts.MEP)
PROMPTS = {
    "reference": {"dense": REF_DENSE_PROMPT, "masked": REF_MASKED_PROMPT},
    "project": {"dense": DENSE_PROMPT, "masked": MASKED_PROMPT},
}


def masked_answer(event: Event, reasoning: str) -> str:
    return (
        f"<think>{reasoning.strip()}</think><answer>So the description of the predicted event "
        f"from {event.start:.1f} to {event.end:.1f} is: {event.caption.strip()}</answer>"
    )


def template_reasoning(events: list[Event], k: int) -> str:
    """A templated chain of thought from the neighbouring events, for data sets
    (like the demo) that have no LLM-written reasoning."""
    parts = []
    if k > 0:
        parts.append(f"Before the masked segment, {_clause(events[k - 1].caption)}")
    if k + 1 < len(events):
        parts.append(f"After it, {_clause(events[k + 1].caption)}")
    parts.append(
        f"The masked segment lasts {events[k].end - events[k].start:.1f} seconds, so the missing "
        "event must connect these two states."
    )
    return " ".join(parts)


def _clause(caption: str) -> str:
    c = caption.strip().rstrip(".")
    return (c[:1].lower() + c[1:] + ".") if c else "nothing is described."


def mask_frame_range(event: Event, fps: float = 1.0) -> tuple[int, int]:
    """Inclusive frame indices (at `fps`) inside the event: VER's
    `masked_start_end_frame_idxs` entry."""
    first = math.ceil(event.start * fps - 1e-6)
    last = math.ceil(event.end * fps - 1e-6) - 1
    return first, max(first, last)


def masked_sample(
    events: list[Event],
    k: int,
    reasoning: str | None = None,
    fps: float = 1.0,
    prompt: str = REF_MASKED_PROMPT,
):
    """(prompt, answer, [[first, last]]) masking event `k` of a dense annotation;
    `prompt` is a template with `{start}`/`{end}` (see PROMPTS)."""
    if not 0 <= k < len(events):
        raise IndexError(f"event {k} of {len(events)}")
    e = events[k]
    prompt = prompt.format(start=e.start, end=e.end)
    answer = masked_answer(e, reasoning if reasoning is not None else template_reasoning(events, k))
    return prompt, answer, [list(mask_frame_range(e, fps))]


def masked_seconds(frame_range: tuple[int, int], fps: float = 1.0) -> tuple[float, float]:
    """[start, end) seconds covered by an inclusive frame-index range."""
    return frame_range[0] / fps, (frame_range[1] + 1) / fps
