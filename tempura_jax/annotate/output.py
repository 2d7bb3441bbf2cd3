"""The run's outputs: VER records (exactly what `data.records` reads),
`summary.json`, and merging the outputs of `--shard I/N` runs.

Stage-2 records carry the reference's dense-captioning prompt, stage-1
records its masked-event prompt (`data.events.PROMPTS["reference"]`, byte for
byte); media paths are relative to the videos folder."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

from tempura_jax.annotate.pipeline import REASONS, events_of
from tempura_jax.annotate.store import write_json
from tempura_jax.data.events import PROMPTS, format_events, masked_sample
from tempura_jax.data.records import ver_record

META = ("prompt_version", "model", "dry_run", "shard")
FILES = ("stage2_dense.json", "stage1_masked.json", "summary.json")
SHARD_DIR = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


def records(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """(stage-2 dense records, stage-1 masked records) of the kept videos."""
    dense, masked = [], []
    for r in sorted(results, key=lambda r: r["video"]):
        if r.get("status") != "kept":
            continue
        rid = Path(r["video"]).with_suffix("").as_posix().replace("/", "__")
        events = events_of(r)
        extra = {"category": r["category"], "duration": r["duration"]}
        prompt = PROMPTS["reference"]["dense"]
        dense.append(ver_record(rid, r["video"], prompt, format_events(events), **extra))
        m = r.get("masked")
        if m:
            prompt, answer, window = masked_sample(
                events, m["index"], m["reasoning"], prompt=PROMPTS["reference"]["masked"]
            )
            masked.append(
                ver_record(
                    f"{rid}_m{m['index']}",
                    r["video"],
                    prompt,
                    answer,
                    masked_start_end_frame_idxs=window,
                    **extra,
                )
            )
    return dense, masked


def summary(results: list[dict], tally: dict, meta: dict) -> dict:
    dropped = collections.Counter(r["reason"] for r in results if r.get("status") == "dropped")
    skipped = collections.Counter(r["masked_skipped"] for r in results if r.get("masked_skipped"))
    kept = [r for r in results if r.get("status") == "kept"]
    return {
        **meta,
        "videos": {
            "seen": len(results),
            "kept": len(kept),
            "dropped": {k: dropped[k] for k in REASONS},
            "dense_records": len(kept),
            "masked_records": sum(1 for r in kept if r.get("masked")),
            "no_masked_record": dict(skipped),
        },
        **tally,
        "dropped_videos": [
            {"video": r["video"], "reason": r["reason"], "detail": r["detail"]}
            for r in results
            if r.get("status") == "dropped"
        ],
    }


def write(out: Path, results: list[dict], tally: dict, meta: dict) -> dict:
    """Write the three files (each atomically; the summary last, so a
    summary on disk means the records next to it are complete)."""
    dense, masked = records(results)
    write_json(out / "stage2_dense.json", dense)
    write_json(out / "stage1_masked.json", masked)
    s = summary(results, tally, meta)
    write_json(out / "summary.json", s)
    return s


def shard_dir(out: Path, index: int, count: int) -> Path:
    return out / "shards" / f"shard-{index:05d}-of-{count:05d}"


def _add(a, b):
    """Sum two summaries' counters (nested dicts of numbers)."""
    if isinstance(a, dict):
        return {k: _add(a.get(k, 0), b.get(k, 0)) for k in {**a, **b}}
    return a + b


def merge(out: Path) -> dict:
    """Join `out/shards/shard-I-of-N/` into `out/`; every shard must be done."""
    folders = sorted(p for p in (out / "shards").glob("shard-*") if SHARD_DIR.match(p.name))
    if not folders:
        raise FileNotFoundError(f"{out / 'shards'}: no shard-IIIII-of-NNNNN folders to merge")
    counts = {int(SHARD_DIR.match(p.name).group(2)) for p in folders}
    if len(counts) != 1:
        raise ValueError(f"{out / 'shards'}: shards of different splits {sorted(counts)}")
    n = counts.pop()
    done = {int(SHARD_DIR.match(p.name).group(1)) for p in folders if (p / "summary.json").exists()}
    missing = sorted(set(range(n)) - done)
    if missing:
        raise ValueError(f"{out / 'shards'}: shards {missing} of {n} have no summary.json yet")
    dense, masked, dropped_videos, total = [], [], [], None
    for i in range(n):
        folder = shard_dir(out, i, n)
        dense += json.loads((folder / "stage2_dense.json").read_text("utf-8"))
        masked += json.loads((folder / "stage1_masked.json").read_text("utf-8"))
        s = json.loads((folder / "summary.json").read_text("utf-8"))
        dropped_videos += s.pop("dropped_videos")
        meta = {k: s.pop(k) for k in META if k in s}
        total = s if total is None else _add(total, s)
    meta["shard"] = f"merged {n}"
    dense.sort(key=lambda r: r["video"])
    masked.sort(key=lambda r: r["video"])
    write_json(out / "stage2_dense.json", dense)
    write_json(out / "stage1_masked.json", masked)
    merged = {**meta, **total, "dropped_videos": dropped_videos}
    write_json(out / "summary.json", merged)
    return merged
