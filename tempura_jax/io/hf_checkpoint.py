"""An HF checkpoint directory (`model.safetensors` or a sharded index) as one
name -> tensor mapping, with names normalised to the hub layout."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tempura_jax.io.safetensors import SafetensorsError, SafetensorsFile, write_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

# transformers 5.x in-memory names -> hub names (the files on the hub keep the latter).
_RENAMES = (
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.language_model\."), "model."),
)


def hub_name(name: str) -> str:
    for pattern, repl in _RENAMES:
        name, n = pattern.subn(repl, name)
        if n:
            break
    return name


class HFCheckpoint:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if (self.dir / INDEX).exists():
            index_path = self.dir / INDEX
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise SafetensorsError(f"{index_path}: not a safetensors index ({e})") from e
            files = {f: SafetensorsFile(self.dir / f) for f in sorted(set(weight_map.values()))}
            self.where = {}
            for name, fname in weight_map.items():
                if name not in files[fname].entries:
                    raise SafetensorsError(
                        f"{self.dir / fname}: tensor {name} listed in index is missing"
                    )
                self.where[name] = files[fname]
        elif (self.dir / SINGLE).exists():
            f = SafetensorsFile(self.dir / SINGLE)
            self.where = {name: f for name in f.keys()}
        else:
            raise SafetensorsError(f"{self.dir}: no {SINGLE} or {INDEX}")
        self.source_names = {hub_name(n): n for n in self.where}
        if len(self.source_names) != len(self.where):
            raise SafetensorsError(f"{self.dir}: tensors appear under both hub and in-memory names")

    def names(self) -> set[str]:
        return set(self.source_names)

    def spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        src = self.source_names[name]
        return self.where[src].spec(src)

    def read(self, name: str) -> np.ndarray:
        src = self.source_names[name]
        return self.where[src].read(src)

    def file_of(self, name: str) -> Path:
        return self.where[self.source_names[name]].path


TensorInfo = tuple[str, np.dtype, tuple[int, ...]]


def plan_shards(tensors: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Greedy, in order, like transformers: a tensor larger than the limit gets its own file."""
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for t in tensors:
        nbytes = np.dtype(t[1]).itemsize * int(np.prod(t[2]))
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def write_hf_weights(
    directory: Path, tensors: list[TensorInfo], arrays: Iterator[np.ndarray], max_shard_bytes: int
) -> list[Path]:
    """Stream `arrays` (in `tensors` order) into safetensors shards plus an index."""
    shards = plan_shards(tensors, max_shard_bytes)
    names = (
        [SINGLE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    it = iter(arrays)
    for fname, shard in zip(names, shards, strict=True):
        write_file(directory / fname, shard, (next(it) for _ in shard), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(np.dtype(d).itemsize * int(np.prod(s)) for _, d, s in tensors)
        weight_map = {t[0]: f for f, shard in zip(names, shards, strict=True) for t in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX).write_text(json.dumps(index, indent=2))
    return [directory / n for n in names]
