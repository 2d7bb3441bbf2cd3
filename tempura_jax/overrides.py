"""Dotted-key overrides and help for frozen dataclass config trees.

`apply(cfg, ["optim.llm_lr=2e-5", "mesh.shape=2,2,2"])` returns a new tree;
every leaf field of every nested dataclass is a key. Values are parsed by the
field's type annotation, so a typo in a key or a value fails before anything
runs, naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any


class OverrideError(ValueError):
    pass


def option(default: Any, help: str) -> Any:
    """A config field with its meaning, which `describe` prints for --help."""
    return dataclasses.field(default=default, metadata={"help": help})


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, type, value) for every leaf field."""
    for key, tp, value, _ in documented_leaves(cfg, prefix):
        yield key, tp, value


def documented_leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """(dotted key, type, value, help) for every leaf field ("" if undocumented)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if _is_config(value):
            yield from documented_leaves(value, key + ".")
        else:
            yield key, hints[f.name], value, f.metadata.get("help", "")


def _parse(text: str, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _parse(text, a, key)
            except OverrideError as e:
                errors.append(str(e))
        raise OverrideError("; ".join(errors))
    if origin is tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(t, args[0], key) for t in items)
        if len(items) != len(args):
            raise OverrideError(f"{key}: expected {len(args)} comma-separated values, got {text!r}")
        return tuple(_parse(t, a, key) for t, a in zip(items, args, strict=True))
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{key}: expected true/false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise OverrideError(f"{key}: expected {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    raise OverrideError(f"{key}: cannot parse a value of type {tp}")


def _set(cfg: Any, path: list[str], value: str, full: str) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    head = path[0]
    if head not in names:
        raise OverrideError(f"unknown key {full!r} (no field {head!r}; has {sorted(names)})")
    current = getattr(cfg, head)
    if len(path) > 1:
        if not _is_config(current):
            raise OverrideError(f"unknown key {full!r}: {head!r} is a value, not a group")
        return dataclasses.replace(cfg, **{head: _set(current, path[1:], value, full)})
    if _is_config(current):
        raise OverrideError(f"{full!r} is a group; set one of its keys ({full}.<key>=...)")
    return dataclasses.replace(cfg, **{head: _parse(value, _hints(type(cfg))[head], full)})


def apply(cfg: Any, overrides: Sequence[str]) -> Any:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OverrideError(f"override {item!r} is not key=value")
        try:
            cfg = _set(cfg, key.strip().split("."), value.strip(), key.strip())
        except OverrideError:
            raise
        except (TypeError, ValueError) as e:  # a dataclass __post_init__ check
            raise OverrideError(f"{key}={value}: {e}") from e
    return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def describe(cfg: Any) -> str:
    """Two lines per key (for --help): key, current value and type, then its meaning."""
    rows = [(k, _type_name(t), repr(v), h) for k, t, v, h in documented_leaves(cfg)]
    width = max(len(k) for k, *_ in rows)
    return "\n".join(
        f"  {k:<{width}}  {v}   ({t})" + (f"\n  {'':<{width}}    {h}" if h else "")
        for k, t, v, h in rows
    )


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Rebuild a config tree saved with `to_dict` (JSON lists become tuples).
    Keys the class no longer has are ignored, missing ones keep their defaults,
    so a checkpoint written by an older version still loads."""
    if not isinstance(data, dict):
        raise OverrideError(f"{where}: expected an object, got {type(data).__name__}")
    hints, kwargs = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _from_json(data[f.name], hints[f.name], f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise OverrideError(f"{where}: {e}") from e


def _from_json(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple and isinstance(value, list):
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if inner is None:
            return tuple(_from_json(v, a, where) for v, a in zip(value, args, strict=False))
        return tuple(_from_json(v, inner, where) for v in value)
    return value
