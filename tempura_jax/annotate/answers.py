"""The JSON contract with the server: one schema per stage (sent as
`response_format` json_schema, named after the stage), and lenient parsing of
the answers, for servers that ignore `response_format` and wrap the object in
prose or code fences."""

from __future__ import annotations

import json
import math
from typing import Any

from tempura_jax.annotate.prompts import PROMPTS

STAGES = ("category", "segments", "descriptions", "coherence", "masked_event")


class InvalidAnswer(ValueError):
    """An answer that does not follow its stage's schema (retried up to N times)."""


def _obj(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": required or list(properties),
        "additionalProperties": False,
    }


_STR, _BOOL, _NUM = {"type": "string"}, {"type": "boolean"}, {"type": "number"}


def schema(stage: str, categories: tuple[str, ...] = PROMPTS.categories) -> dict:
    """The JSON schema of a stage's answer."""
    if stage == "category":
        return _obj({"category": {"type": "string", "enum": list(categories)}, "talking": _BOOL})
    if stage == "segments":
        event = _obj({"start": _NUM, "end": _NUM})
        return _obj({"events": {"type": "array", "items": event}})
    if stage == "descriptions":
        return _obj({"descriptions": {"type": "array", "items": _STR}})
    if stage == "coherence":
        return _obj({"reasoning": _STR, "coherent": _BOOL})
    if stage == "masked_event":
        return _obj({"reasoning": _STR, "event": _STR})
    raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")


def response_format(stage: str, categories: tuple[str, ...] = PROMPTS.categories) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": stage, "schema": schema(stage, categories), "strict": True},
    }


def extract_json(text: str | None) -> dict:
    """The first JSON object in `text` (whole text, inside ``` fences, or after prose)."""
    text = (text or "").strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                value, _ = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise InvalidAnswer(f"no JSON object in the answer ({text[:80]!r})")


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise InvalidAnswer(f"{field!r} is not a boolean: {value!r}")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidAnswer(f"{field!r} is not a non-empty string")
    return value.strip()


def _seconds(value: Any, field: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidAnswer(f"{field!r} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise InvalidAnswer(f"{field!r} is not finite")
    return x


def parse(stage: str, text: str | None, categories: tuple[str, ...] = PROMPTS.categories) -> dict:
    """The answer of `stage`, checked against its schema and normalised;
    raises InvalidAnswer naming the field."""
    raw = extract_json(text)

    def need(key: str):
        if key not in raw:
            raise InvalidAnswer(f"missing field {key!r}")
        return raw[key]

    if stage == "category":
        name = _text(need("category"), "category")
        match = {c.lower(): c for c in categories}.get(name.lower())
        if match is None:
            raise InvalidAnswer(f"category {name!r} is not one of the {len(categories)}")
        return {"category": match, "talking": _bool(need("talking"), "talking")}
    if stage == "segments":
        events = need("events")
        if not isinstance(events, list) or not events:
            raise InvalidAnswer("'events' is not a non-empty list")
        out = []
        for i, e in enumerate(events):
            if isinstance(e, (list, tuple)) and len(e) == 2:  # lenient: [start, end]
                e = {"start": e[0], "end": e[1]}
            if not isinstance(e, dict):
                raise InvalidAnswer(f"events[{i}] is not an object")
            start = _seconds(e.get("start"), f"events[{i}].start")
            out.append([start, _seconds(e.get("end"), f"events[{i}].end")])
        return {"events": out}
    if stage == "descriptions":
        items = need("descriptions")
        if not isinstance(items, list):
            raise InvalidAnswer("'descriptions' is not a list")
        return {"descriptions": [_text(d, f"descriptions[{i}]") for i, d in enumerate(items)]}
    if stage == "coherence":
        return {
            "reasoning": _text(need("reasoning"), "reasoning"),
            "coherent": _bool(need("coherent"), "coherent"),
        }
    if stage == "masked_event":
        return {
            "reasoning": _text(need("reasoning"), "reasoning"),
            "event": _text(need("event"), "event"),
        }
    raise ValueError(f"unknown stage {stage!r}")
