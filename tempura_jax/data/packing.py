"""Packed rows (`data.packing=true`): several samples per row up to a fixed
(row_tokens, row_patches) (data.pack_seq_len, data.pack_patches), so a whole run compiles one step
shape instead of one per (sequence, patch) bucket.

Each record's (tokens, patches) is measured once on the host from the
container's packet times and the sampling config (`ExampleBuilder.measure`,
no decoding). From those, every process computes the same plan per epoch: a
seeded record order, then first fit into the open rows of a window, or
(`data.pack_sort=N`) best fit decreasing within blocks of N records, whose
rows are then shuffled so that the step order carries no length order. Global
step k is rows [k*G, (k+1)*G) of the plan and process i reads rows
[i*R, (i+1)*R) of it, like `BlockShard`; the iterator state is one index, so
a resume is exact. steps_per_epoch comes from epoch 0's plan: a later epoch
with more rows drops its last ones (those still open when the records ran
out, the least full), one with fewer ends in empty rows.

Within a row, sample j has decoder segment id j + 1 (padding 0), its own
rope positions (from 0, as unpacked), its own vision frames and windows (the
row's grids go through `vision_geometry` together, which keeps them apart),
and the label at its first token is ignored (it is never a target
unpacked). A record that fails while decoding leaves its space as padding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.data.batching import pixel_dtype
from tempura_jax.data.chat import IGNORE
from tempura_jax.data.config import DataConfig
from tempura_jax.data.lengths import measure_records
from tempura_jax.data.records import Problem, Record
from tempura_jax.data.sample import Example, ExampleBuilder, SampleError
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.model.vision_geometry import vision_geometry


def first_fit(
    lengths: np.ndarray, order: np.ndarray, budget: tuple[int, int], window: int
) -> list[list[int]]:
    """Rows of record indices: each record (in `order`) goes into the first of
    the `window` open rows with room for its (tokens, patches), else opens a
    row; the oldest open row closes when the window is full."""
    cap = np.array(budget, np.int64)
    rows: list[list[int]] = []
    open_rows: list[list[int]] = []
    free = np.zeros((0, 2), np.int64)
    for i in order:
        need = lengths[i]
        hit = np.flatnonzero((free >= need).all(axis=1))
        if hit.size:
            j = int(hit[0])
            open_rows[j].append(int(i))
            free[j] -= need
            continue
        if len(open_rows) == window:
            rows.append(open_rows.pop(0))
            free = free[1:]
        open_rows.append([int(i)])
        free = np.concatenate([free, (cap - need)[None]])
    return rows + open_rows


def best_fit_sorted(
    lengths: np.ndarray,
    order: np.ndarray,
    budget: tuple[int, int],
    block: int,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Rows of record indices: `order` is cut into blocks of `block` records;
    in each, records go largest first into the row they leave least room in
    (both budgets, as shares of the row), else open a row. It fills rows
    closer to the bin-packing bound than first fit (most where samples are
    short against the row); each block's rows are shuffled with `rng`."""
    cap = np.array(budget, np.int64)
    rows: list[list[int]] = []
    for start in range(0, len(order), block):
        chunk = np.asarray(order[start : start + block])
        size = (lengths[chunk] / cap).max(axis=1)
        chunk = chunk[np.argsort(-size, kind="stable")]
        block_rows: list[list[int]] = []
        free = np.zeros((0, 2), np.int64)
        for i in chunk:
            need = lengths[i]
            room = free - need
            fits = (room >= 0).all(axis=1)
            if fits.any():
                left = np.where(fits, (room / cap).sum(axis=1), np.inf)
                j = int(left.argmin())
                block_rows[j].append(int(i))
                free[j] = room[j]
            else:
                block_rows.append([int(i)])
                free = np.concatenate([free, (cap - need)[None]])
        rows += [block_rows[k] for k in rng.permutation(len(block_rows))]
    return rows


class PackPlan:
    """The rows of every epoch, identical on every process.

    `lengths`: (N, 2) tokens and patches of the usable records (index into
    `usable`, the positions of those records in the data set)."""

    def __init__(
        self,
        lengths: np.ndarray,
        usable: np.ndarray,
        cfg: DataConfig,
        global_rows: int,
    ):
        self.lengths, self.usable = lengths, usable
        self.budget = (cfg.row_tokens, cfg.row_patches)
        self.window, self.seed, self.shuffle = cfg.pack_window, cfg.seed, cfg.shuffle
        self.sort = cfg.pack_sort
        self.global_rows = global_rows
        self.steps_per_epoch = len(self.rows(0)) // global_rows

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one plan per process, a few epochs live
    def rows(self, epoch: int) -> list[list[int]]:
        """Data-set record indices per row, in the order the rows closed."""
        n = len(self.lengths)
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        if self.sort:
            rng = np.random.default_rng([self.seed, epoch, 1])
            rows = best_fit_sorted(self.lengths, order, self.budget, self.sort, rng)
        else:
            rows = first_fit(self.lengths, order, self.budget, self.window)
        return [[int(self.usable[i]) for i in r] for r in rows]

    def row(self, epoch: int, index: int) -> list[int]:
        rows = self.rows(epoch)
        return rows[index] if index < len(rows) else []


def plan_dataset(
    records: Sequence[Record],
    cfg: DataConfig,
    model_cfg: ModelConfig,
    global_rows: int,
) -> tuple[PackPlan, list[tuple[int, Problem]]]:
    """Measure every record and plan the rows; returns the plan and the
    (index, Problem) of the records it leaves out."""
    measured = measure_records(records, cfg, model_cfg)
    problems = [(i, m) for i, m in enumerate(measured) if isinstance(m, Problem)]
    usable = np.array([i for i, m in enumerate(measured) if not isinstance(m, Problem)], np.int64)
    lengths = np.array([measured[i] for i in usable], np.int64).reshape(-1, 2)
    return PackPlan(lengths, usable, cfg, global_rows), problems


class PackedRows(grain.MapDataset):
    """This process's rows of every global step, as (record, (tokens, patches))
    lists. Index e * len + j is row j of epoch e."""

    def __init__(self, records: Sequence[Record], plan: PackPlan, shard_index: int, rows: int):
        super().__init__()
        self._records, self._plan = records, plan
        self._shard, self._rows = shard_index, rows
        self._len = plan.steps_per_epoch * rows
        self._lengths = {int(u): tuple(int(x) for x in plan.lengths[k])
                         for k, u in enumerate(plan.usable)}  # fmt: skip

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, self._len)
        k, r = divmod(j, self._rows)
        row = self._plan.row(epoch, k * self._plan.global_rows + self._shard * self._rows + r)
        return [(self._records[i], self._lengths[i]) for i in row]


class BuildRow(grain.transforms.Map):
    """A row's records -> Examples (or the Problem that stopped each). An
    example whose size differs from the plan's would not fit its row: it
    becomes a Problem (a bug in `measure` if it ever happens)."""

    def __init__(self, cfg: DataConfig, model_cfg: ModelConfig):
        self.cfg, self.model_cfg = cfg, model_cfg
        self._builder: ExampleBuilder | None = None

    def __getstate__(self):
        return {"cfg": self.cfg, "model_cfg": self.model_cfg, "_builder": None}

    def map(self, row: list[tuple[Record, tuple[int, int]]]) -> list[Example | Problem]:
        if self._builder is None:
            self._builder = ExampleBuilder(self.cfg, Tokenizer(self.cfg.tokenizer), self.model_cfg)
        out: list[Example | Problem] = []
        for rec, planned in row:
            try:
                e = self._builder.build(rec)
            except SampleError as err:
                out.append(Problem(err.source, err.reason, err.detail))
                continue
            except Exception as err:  # noqa: BLE001 - one bad record must not end the run
                out.append(Problem(rec.source, "error", f"{type(err).__name__}: {err}"))
                continue
            got = (e.num_tokens, e.num_patches)
            if got != planned:
                out.append(
                    Problem(
                        rec.source, "error", f"built {got} (tokens, patches), planned {planned}"
                    )
                )
            else:
                out.append(e)
        return out


def collate_packed(
    rows: list[list[Example]],
    cfg: DataConfig,
    model_cfg: ModelConfig,
    pad_id: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Packed rows -> the arrays `collate` writes, at (row_tokens, row_patches)."""
    s, p = cfg.row_tokens, cfg.row_patches
    unit = model_cfg.vision.merge_unit
    out = {
        "input_ids": np.full((batch_size, s), pad_id, np.int32),
        "segment_ids": np.zeros((batch_size, s), np.int32),
        "labels": np.full((batch_size, s), IGNORE, np.int32),
        "position_ids": np.ones((3, batch_size, s), np.int32),
        "num_image_tokens": np.zeros((batch_size,), np.int32),
        "pixel_values": np.zeros((batch_size, p, cfg.pixels.row_size), pixel_dtype(cfg)),
    }
    vision: dict[str, list[np.ndarray]] = {}
    for i in range(batch_size):
        row = rows[i] if i < len(rows) else []
        t = q = 0
        for j, e in enumerate(row):
            n, m = e.num_tokens, e.num_patches
            if t + n > s or q + m > p:
                raise ValueError(
                    f"{e.source}: does not fit its packed row ({s} tokens, {p} patches)"
                )
            out["input_ids"][i, t : t + n] = e.input_ids
            out["segment_ids"][i, t : t + n] = j + 1
            out["labels"][i, t : t + n] = e.labels
            out["labels"][i, t] = IGNORE  # the previous sample's last token predicts nothing
            out["position_ids"][:, i, t : t + n] = e.position_ids
            if not e.as_video:
                out["num_image_tokens"][i] += int((e.input_ids == model_cfg.image_token_id).sum())
            out["pixel_values"][i, q : q + m] = e.pixel_values
            t, q = t + n, q + m
        if row:
            grid = np.concatenate([e.grid_thw for e in row])
            g = vision_geometry(grid, model_cfg.vision).padded(p, unit)
            geom = {k: getattr(g, k) for k in GEOMETRY_KEYS}
        else:  # an empty row: a valid, fully padded vision layout
            geom = _empty_geometry(p, unit)
        for k, v in geom.items():
            vision.setdefault(k, []).append(v)
    out.update({k: np.stack(v) for k, v in vision.items()})
    return out


GEOMETRY_KEYS = ("window_index", "reverse_index", "window_segments", "frame_segments", "rotary_pos")


def _empty_geometry(p: int, unit: int) -> dict[str, np.ndarray]:
    return {
        "window_index": np.arange(p // unit, dtype=np.int32),
        "reverse_index": np.arange(p // unit, dtype=np.int32),
        "window_segments": np.full((p,), -1, np.int32),
        "frame_segments": np.full((p,), -1, np.int32),
        "rotary_pos": np.zeros((p, 2), np.int32),
    }


class _PackedBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, size: int, collate_fn):
        super().__init__(parent)
        self._size, self._collate = size, collate_fn

    def __next__(self) -> dict[str, Any]:
        rows = [next(self._parent) for _ in range(self._size)]
        examples = [[e for e in row if isinstance(e, Example)] for row in rows]
        batch = self._collate(examples)
        batch["sources"] = np.array(["\n".join(e.source for e in row) for row in examples])
        batch["skipped"] = [p for row in rows for p in row if isinstance(p, Problem)]
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class BatchPackedRows(grain.IterDataset):
    """Batches of `size` packed rows; Problems ride along in `batch["skipped"]`
    (as in `BatchExamples`). Steps are whole, so no remainder is left."""

    def __init__(self, parent: grain.IterDataset, size: int, collate_fn):
        super().__init__(parent)
        self._size, self._collate = size, collate_fn

    def __iter__(self):
        return _PackedBatchIterator(self._parent.__iter__(), self._size, self._collate)


class CollatePacked:
    def __init__(self, cfg: DataConfig, model_cfg: ModelConfig, pad_id: int):
        self.cfg, self.model_cfg, self.pad_id = cfg, model_cfg, pad_id

    def __call__(self, rows: list[list[Example]]) -> dict[str, np.ndarray]:
        return collate_packed(rows, self.cfg, self.model_cfg, self.pad_id, self.cfg.batch_size)
