"""Built-in inference tasks: the prompt each one sends and how its answer is read.

Dense captioning and masked-event prediction use the reference's own prompts
(`data.events.PROMPTS["reference"]`, the wording of VER and of the demo
data), so a TEMPURA checkpoint sees the wording it was trained on;
`dense_project` / `masked_project` send this project's earlier wording.
Grounding and highlight detection ask for the answer formats the evaluation
parsers read (`eval.parsing`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from tempura_jax.data.events import PROMPTS, parse_events
from tempura_jax.eval.parsing import parse_highlights, parse_windows
from tempura_jax.reference_prompts import VHD_FT, VTG, VTG_FT

GROUNDING_PROMPT = (
    'Find the moment in the video that matches this description: "{query}". '
    "Answer with its start and end time in seconds, in the form: From A to B seconds."
)
HIGHLIGHT_PROMPT = (
    'Find the highlight moments of the video for the query: "{query}". Answer in the form: '
    "The highlight timestamps are in the A, B, C seconds. Their saliency scores are x, y, z."
)
_MASKED_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL)


def events_field(text: str) -> dict[str, Any]:
    return {"events": [[e.start, e.end, e.caption] for e in parse_events(text)]}


def masked_field(text: str) -> dict[str, Any]:
    """The `<answer>` part (the whole text if the tags are missing) and its window."""
    m = _MASKED_ANSWER.search(text or "")
    answer = (m.group(1) if m else text or "").strip()
    return {"prediction": answer, "windows": [list(w) for w in parse_windows(answer)]}


def windows_field(text: str) -> dict[str, Any]:
    return {"windows": [list(w) for w in parse_windows(text)]}


def highlights_field(text: str) -> dict[str, Any]:
    return {"highlights": [list(h) for h in parse_highlights(text)]}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prompt: str  # str.format template: {query}, {start}, {end}
    parse: Callable[[str], dict[str, Any]]
    needs_query: bool = False
    needs_mask: bool = False
    # a reference string with the `<your_query>` placeholder, not a str.format template
    literal: bool = False

    def text(self, query: str = "", mask: tuple[float, float] | None = None) -> str:
        if self.needs_query and not query:
            raise ValueError(f"task {self.name!r} needs a query")
        if self.needs_mask and mask is None:
            raise ValueError(f"task {self.name!r} needs a masked window (start, end seconds)")
        if self.literal:
            return self.prompt.replace("<your_query>", query)
        start, end = mask if mask is not None else (0.0, 0.0)
        return self.prompt.format(query=query, start=start, end=end)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("dense", PROMPTS["reference"]["dense"], events_field),
        Task("masked", PROMPTS["reference"]["masked"], masked_field, needs_mask=True),
        Task("dense_project", PROMPTS["project"]["dense"], events_field),
        Task("masked_project", PROMPTS["project"]["masked"], masked_field, needs_mask=True),
        Task("grounding", GROUNDING_PROMPT, windows_field, needs_query=True),
        Task("highlight", HIGHLIGHT_PROMPT, highlights_field, needs_query=True),
        Task("free", "{query}", events_field, needs_query=True),
        # The reference's benchmark prompts (`prompts=tempura_paper`), byte-identical.
        Task("vtg", VTG, windows_field, needs_query=True, literal=True),
        Task("vtg_ft", VTG_FT, windows_field, needs_query=True, literal=True),
        Task("vhd_ft", VHD_FT, highlights_field, needs_query=True, literal=True),
    )
}

# Prompt protocols: which task each benchmark task runs. `tempura_paper` is the
# reference's (zero-shot VTG for grounding, as behind the paper's Charades-STA
# numbers); `tempura_paper_ft` uses its short VTG_FT for Charades-tuned checkpoints.
PROTOCOLS: dict[str, dict[str, str]] = {
    "ours": {},
    "tempura_paper": {"grounding": "vtg", "highlight": "vhd_ft"},
    "tempura_paper_ft": {"grounding": "vtg_ft", "highlight": "vhd_ft"},
}


def for_protocol(task: str, protocol: str = "ours") -> str:
    """The task name `task` runs as under `protocol`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown prompt protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol].get(task, task)


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
