"""The annotation prompts: one versioned data file (`prompts.json`, package
data). Its `version` is part of every cache key, so editing a prompt and
bumping the version re-asks only what the change affects; code holds no
prompt text."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

FIELDS = {
    "category": ("system", "user_metadata", "user_frames"),
    "segments": ("system", "user"),
    "descriptions": ("system", "user"),
    "coherence": ("system", "user"),
    "masked_event": ("system", "user"),
}


@dataclasses.dataclass(frozen=True)
class Prompts:
    version: str
    categories: tuple[str, ...]
    schema_note: str
    frames_note: str
    stages: dict[str, dict[str, str]]
    source: str

    def text(self, stage: str, field: str, **values) -> str:
        return self.stages[stage][field].format(**values)


def load(path: str | Path | None = None) -> Prompts:
    """The packaged prompts, or a user's own file with the same layout."""
    if path is None:
        source = "tempura_jax/annotate/prompts.json"
        text = resources.files("tempura_jax.annotate").joinpath("prompts.json").read_text("utf-8")
    else:
        source, text = str(path), Path(path).read_text("utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: line {e.lineno}: {e.msg}") from e
    for key in ("version", "categories", "schema_note", "frames_note", "stages"):
        if key not in raw:
            raise ValueError(f"{source}: missing field {key!r}")
    for stage, fields in FIELDS.items():
        for field in fields:
            if not isinstance(raw["stages"].get(stage, {}).get(field), str):
                raise ValueError(f"{source}: missing string stages.{stage}.{field}")
    return Prompts(
        version=str(raw["version"]),
        categories=tuple(raw["categories"]),
        schema_note=raw["schema_note"],
        frames_note=raw["frames_note"],
        stages=raw["stages"],
        source=source,
    )


PROMPTS = load()
