"""Each record's (tokens, patches) for packing, measured without decoding and
optionally cached in a file (`data.pack_lengths`), so a large data set is
demuxed once, not at every start of every process.

A cache entry is keyed by the record's content and its media file's size and
modification time; the file as a whole by the config fields that change
lengths (sampling, pixels, mode, task checks, budgets, prompt, the
tokenizer's file). Records that are new or changed are measured again and the
file is rewritten atomically (every process writes the same content). Media
that could not be read is not cached (it may be a passing storage error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tempura_jax.config import ModelConfig
from tempura_jax.data.config import DataConfig
from tempura_jax.data.records import Problem, Record
from tempura_jax.data.sample import ExampleBuilder, SampleError
from tempura_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Length = tuple[int, int]
FORMAT = 1
TRANSIENT = ("bad_media", "error")
# Fields that never change a record's (tokens, patches).
_IRRELEVANT = {
    "data", "media_root", "seed", "shuffle", "batch_size", "num_epochs", "read_threads",
    "workers", "prefetch", "max_skip_fraction", "skip_log", "pixel_dtype", "seq_bucket_min",
    "seq_bucket_growth", "patch_bucket_min", "patch_bucket_growth", "pack_window",
    "pack_sort", "pack_lengths", "stamp", "blank_masked", "stamp_masked",
}  # fmt: skip


def measure_records(
    records: Sequence[Record], cfg: DataConfig, model_cfg: ModelConfig | None
) -> list[Length | Problem]:
    """Each record's (tokens, patches), or the Problem that rejects it; read
    from and written to `cfg.pack_lengths` when it is set."""
    if not cfg.pack_lengths:
        return _measure(records, cfg, model_cfg)
    path = Path(cfg.pack_lengths)
    fingerprint = config_fingerprint(cfg)
    cached: dict[str, list] = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable pack_lengths cache ({e}); delete it") from e
        if saved.get("format") == FORMAT and saved.get("config") == fingerprint:
            cached = saved["records"]
        else:
            log.info("%s: made with another data config; measuring again", path)
    keys = [record_key(r) for r in records]
    todo = [i for i, k in enumerate(keys) if k not in cached]
    if todo:
        log.info("measuring %d of %d records for packing", len(todo), len(records))
        fresh = _measure([records[i] for i in todo], cfg, model_cfg)
        for i, m in zip(todo, fresh, strict=True):
            cached[keys[i]] = list(m) if isinstance(m, tuple) else [m.reason, m.detail]
        # Unreadable media may be a passing storage error: measured again next time.
        keep = {k: cached[k] for k in keys if cached[k][0] not in TRANSIENT}
        _write(path, {"format": FORMAT, "config": fingerprint, "records": keep})
    out: list[Length | Problem] = []
    for rec, k in zip(records, keys, strict=True):
        a, b = cached[k]
        out.append((int(a), int(b)) if isinstance(a, int) else Problem(rec.source, a, b))
    return out


def _measure(records, cfg, model_cfg) -> list[Length | Problem]:
    builder = ExampleBuilder(cfg, Tokenizer(cfg.tokenizer), model_cfg)

    def one(rec: Record) -> Length | Problem:
        try:
            return builder.measure(rec)
        except SampleError as e:
            return Problem(e.source, e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - one bad record must not end the run
            return Problem(rec.source, "error", f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(max(1, cfg.read_threads)) as pool:
        return list(pool.map(one, records))


def config_fingerprint(cfg: DataConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _IRRELEVANT}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    tok = Path(cfg.tokenizer) / "tokenizer.json"
    h.update(tok.read_bytes() if tok.exists() else b"")
    return h.hexdigest()


def record_key(rec: Record) -> str:
    """The record's content and its media's size and mtime (a folder: its own)."""
    try:
        st = os.stat(rec.media)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    return hashlib.sha256(repr((rec, stamp)).encode()).hexdigest()[:32]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
