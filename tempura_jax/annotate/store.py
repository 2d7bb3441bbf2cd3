"""On-disk state: atomic JSON writes, video content hashes, and the stage cache.

The cache key is (video content hash, stage, prompt version, model): a moved
or renamed video keeps its answers, an edited prompt (new version) or another
model asks again. Each entry is written atomically as soon as its answer is
in, so a run killed midway loses at most the requests in flight."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: readers see the old
    file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (of a frame folder: its file names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def _slug(text: str) -> str:
    """A file-name-safe form of a model or version name, unique by its hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:48]
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


class StageCache:
    """`root/<hash[:2]>/<hash>/<stage>.<version>.<model>.json` entries."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, video_hash: str, stage: str, version: str, model: str) -> Path:
        name = f"{stage}.{_slug(version)}.{_slug(model)}.json"
        return self.root / video_hash[:2] / video_hash / name

    def get(self, video_hash: str, stage: str, version: str, model: str) -> Any | None:
        path = self.path(video_hash, stage, version, model)
        try:
            return json.loads(path.read_text("utf-8"))["value"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, OSError):
            return None  # unreadable entries are recomputed (and overwritten)

    def put(self, video_hash: str, stage: str, version: str, model: str, value: Any) -> None:
        key = {"video": video_hash, "stage": stage, "version": version, "model": model}
        write_json(self.path(video_hash, stage, version, model), {"key": key, "value": value})
