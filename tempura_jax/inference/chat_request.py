"""An OpenAI `POST /v1/chat/completions` body, checked and reduced to what
the Predictor needs: the conversation (with `<video>` where the media was),
the media URLs, TEMPURA's task fields and the sampling knobs. Every problem
is a RequestError naming the field."""

from __future__ import annotations

import dataclasses
from typing import Any

from tempura_jax.inference import tasks
from tempura_jax.inference.media_input import RequestError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    turns: tuple[tuple[str, str], ...]  # (user|assistant, text); `<video>` marks the media
    system: str | None
    kind: str  # "video" or "image"
    urls: tuple[str, ...]
    wheres: tuple[str, ...]  # the field each url came from, for error messages
    task: str  # a tasks.TASKS name; "free" sends the conversation as it is
    query: str  # the last user text (the query of grounding/highlight)
    mask: tuple[float, float] | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    model: str | None


def _number(body: dict, name: str, kind, default, lo=None, hi=None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"field {name!r} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise RequestError(f"field {name!r} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"field {name!r} must be in [{lo}, {hi}], got {value!r}")
    return kind(value)


def _parts(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(f"{where}.content[{j}] must be an object with a 'type'")
    return content


def _url(part: dict, key: str, where: str) -> str:
    value = part.get(key)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}.{key}.url must be a non-empty string")
    return url


def parse(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("field 'messages' must be a non-empty list")
    if body.get("n", 1) != 1:
        raise RequestError("field 'n': only n=1 is supported")
    system, turns, urls, wheres, kinds = None, [], [], [], set()
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}")
        texts, has_media = [], False
        for j, part in enumerate(_parts(msg.get("content"), where)):
            pw = f"{where}.content[{j}]"
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"{pw}.text must be a string")
                texts.append(part["text"])
            elif part["type"] in ("image_url", "video_url"):
                if msg["role"] != "user":
                    raise RequestError(f"{pw}: media only in user messages")
                if urls and not has_media:
                    raise RequestError(f"{pw}: all media must be in one user message")
                urls.append(_url(part, part["type"], pw))
                wheres.append(pw)
                kinds.add(part["type"].split("_")[0])
                has_media = True
            else:
                raise RequestError(f"{pw}: unsupported part type {part['type']!r}")
        text = "\n".join(texts)
        if msg["role"] == "system":
            system = text if system is None else f"{system}\n{text}"
        else:
            turns.append((msg["role"], f"<video>\n{text}" if has_media else text))
    if not urls:
        raise RequestError("messages: a request needs a video_url part or image_url parts")
    if len(kinds) > 1 or (kinds == {"video"} and len(urls) > 1):
        raise RequestError("messages: one video_url, or image_url parts (frames), not both")
    if not turns or turns[-1][0] != "user":
        raise RequestError("messages: the last message must be the user's")
    query = turns[-1][1].removeprefix("<video>\n").strip()
    task = body.get("task") or "free"
    mask = body.get("mask")
    if mask is not None:
        try:
            a, b = (float(v) for v in mask)
        except (TypeError, ValueError):
            raise RequestError(f"field 'mask' must be [start, end] seconds, got {mask!r}") from None
        if not 0 <= a < b:
            raise RequestError(f"field 'mask' needs 0 <= start < end, got {mask!r}")
        mask = (a, b)
    try:
        tasks.get(task).text(query or "-", mask)
    except ValueError as e:
        raise RequestError(f"field 'task': {e}") from None
    if task != "free" and tasks.get(task).needs_query and not query:
        raise RequestError(f"field 'task': task {task!r} needs a query (the user text)")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("field 'stop' must be a string or a list of non-empty strings")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    opts = body.get("stream_options") or {}
    return ChatRequest(
        turns=tuple(turns),
        system=system,
        kind=kinds.pop(),
        urls=tuple(urls),
        wheres=tuple(wheres),
        task=task,
        query=query,
        mask=mask,
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", int, None, lo=1),
        temperature=_number(body, "temperature", float, 0.0, lo=0.0, hi=2.0),
        top_p=max(_number(body, "top_p", float, 1.0, lo=0.0, hi=1.0), 1e-6),  # 0: top token
        seed=_number(body, "seed", int, 0),
        stop=tuple(stop),
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(opts, dict) and opts.get("include_usage")),
        model=body.get("model"),
    )
