"""VER / LLaVA-style JSON records: reading, validation, and the problems found.

A record: `{"video": "<path relative to the media root: a video file or a
folder of <idx>.jpg>", "conversations": [{"from": "human", "value":
"<video>\\n<prompt>"}, {"from": "gpt", "value": "<target>"}, ...]}`, plus
`"masked_start_end_frame_idxs": [[s, e], ...]` (inclusive, at `mask_fps`) in
stage-1 records and optionally `"clip": [start, end]` seconds. Files are JSON
lists or JSON lines. Every problem names the file, the record and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class Record:
    source: str  # "<file>#<index>"
    media: str  # absolute media path
    turns: tuple[tuple[str, str], ...]  # (user|assistant, text)
    system: str | None = None
    masked: tuple[tuple[int, int], ...] = ()
    clip: tuple[float, float] | None = None

    @property
    def target(self) -> str:
        return "\n\n".join(t for r, t in self.turns if r == "assistant")


@dataclasses.dataclass(frozen=True)
class Problem:
    source: str  # file, or file#index
    reason: str  # a short category, used for counting
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}: {self.detail}"


class RecordError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _field(raw: dict, name: str, kind, source: str):
    if name not in raw:
        raise RecordError("bad_record", f"missing field {name!r}")
    if not isinstance(raw[name], kind):
        raise RecordError("bad_record", f"field {name!r} is {type(raw[name]).__name__}")
    return raw[name]


def ver_record(rid: str, video: str, prompt: str, target: str, **extra) -> dict:
    """One VER/LLaVA record as `parse_record` reads it: a human turn carrying
    the video and the prompt, the assistant's target, and extra fields
    (`masked_start_end_frame_idxs`, `clip`, ...)."""
    return {
        "id": rid,
        "video": video,
        **extra,
        "conversations": [
            {"from": "human", "value": "<video>\n" + prompt},
            {"from": "gpt", "value": target},
        ],
    }


def parse_record(raw, source: str, media_root: str | Path) -> Record:
    if not isinstance(raw, dict):
        raise RecordError("bad_record", f"a record must be an object, got {type(raw).__name__}")
    video = _field(raw, "video", str, source)
    convs = _field(raw, "conversations", list, source)
    turns, system = [], None
    for i, turn in enumerate(convs):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError("bad_record", f"{where} needs a string 'value'")
        role = turn.get("from", turn.get("role"))
        if role == "system" and not turns:
            system = turn["value"]
            continue
        if role not in ROLES:
            raise RecordError("bad_record", f"{where}.from is {role!r}")
        turns.append((ROLES[role], turn["value"]))
    if not turns or turns[0][0] != "user":
        raise RecordError("bad_record", "conversations must start with a human turn")
    if not any(r == "assistant" and t.strip() for r, t in turns):
        raise RecordError("no_assistant", "no non-empty gpt/assistant turn")
    n_video = sum(t.count("<video>") for r, t in turns if r == "user")
    if n_video > 1 or any("<video>" in t for r, t in turns if r == "assistant"):
        raise RecordError("bad_record", f"conversations hold {n_video} <video> placeholders")
    masked = []
    for j, pair in enumerate(raw.get("masked_start_end_frame_idxs") or []):
        ok = (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            and 0 <= pair[0] <= pair[1]
        )
        if not ok:
            raise RecordError(
                "bad_mask",
                f"masked_start_end_frame_idxs[{j}] = {pair!r} is not [s, e], 0 <= s <= e",
            )
        masked.append((pair[0], pair[1]))
    clip = raw.get("clip")
    if clip is not None:
        if not (
            isinstance(clip, (list, tuple))
            and len(clip) == 2
            and all(isinstance(x, (int, float)) and math.isfinite(x) for x in clip)
            and 0 <= clip[0] < clip[1]
        ):
            raise RecordError("bad_record", f"clip = {clip!r} is not [start, end) seconds")
        clip = (float(clip[0]), float(clip[1]))
    return Record(
        source=source,
        media=str(Path(media_root) / video),
        turns=tuple(turns),
        system=system,
        masked=tuple(masked),
        clip=clip,
    )


def read_json(path: str | Path) -> list:
    """A JSON list, or JSON lines (a bad line becomes a `RecordError` item in
    place of its record, so the rest of the file is kept); raises RecordError
    when the file as a whole cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError("bad_json", f"cannot read ({e})") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError("bad_json", f"line {e.lineno} column {e.colno}: {e.msg}") from e
        return data
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            items.append(RecordError("bad_json", f"line {n}: {e.msg}"))
    if not items:
        raise RecordError("bad_json", "no records")
    return items


def load_records(
    files: list[str | Path], media_root: str | Path
) -> tuple[list[Record], list[Problem], int]:
    """(valid records, problems, records seen). A file that cannot be read is one
    problem; a bad record is one problem; nothing raises."""
    records, problems, seen = [], [], 0
    for f in files:
        try:
            items = read_json(f)
        except RecordError as e:
            problems.append(Problem(str(f), e.reason, e.detail))
            continue
        for i, raw in enumerate(items):
            seen += 1
            source = f"{f}#{i}"
            try:
                if isinstance(raw, RecordError):
                    raise raw
                records.append(parse_record(raw, source, media_root))
            except RecordError as e:
                problems.append(Problem(source, e.reason, e.detail))
    return records, problems, seen
