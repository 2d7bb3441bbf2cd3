"""JSON-lines files of objects (prediction and annotation files), read with
errors that name file:line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def read_objects(path: str | Path, check: Callable[[dict], None] | None = None) -> list[dict]:
    """Every non-blank line as an object; `check` raises ValueError for a bad one."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"bad JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            if check is not None:
                check(record)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        records.append(record)
    return records
