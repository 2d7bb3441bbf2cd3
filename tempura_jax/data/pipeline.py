"""The Grain pipeline: records -> examples -> fixed-shape batches.

records (this process's shard) -> epoch shuffle -> repeat -> build examples
(in worker processes) -> batch, carrying skipped records along -> prefetch.

Skips travel inside the batches to the main process, which logs and counts
them in one place (`SkipLog`), so worker processes lose nothing. The
iterator's state (Grain's plus the skip counts) is a small JSON-able dict:
restoring it resumes mid-epoch at exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.data.batching import collate
from tempura_jax.data.config import DataConfig
from tempura_jax.data.packing import (
    BatchPackedRows,
    BuildRow,
    CollatePacked,
    PackedRows,
    PackPlan,
    plan_dataset,
)
from tempura_jax.data.records import Problem, Record, load_records
from tempura_jax.data.sample import Example, ExampleBuilder, SampleError
from tempura_jax.data.skips import SkipLog
from tempura_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def from_jax(cls) -> Shard:
        import jax

        return cls(jax.process_index(), jax.process_count())


class BlockShard(grain.MapDataset):
    """This process's rows of every global batch.

    The record order is one seeded shuffle shared by all processes; global
    batch k is elements [k*G, (k+1)*G) of it, and process i reads rows
    [i*R, (i+1)*R) of each (R = G / processes). So a run on any number of
    processes sees the same global batches, and the N mod G remainder of an
    epoch is dropped. Indices past one epoch map onto the parent's next epoch
    (Grain reshuffles there)."""

    def __init__(self, parent: grain.MapDataset, shard: Shard, rows: int):
        super().__init__(parent)
        self._shard, self._rows = shard, rows
        self._global = rows * shard.count
        self._parent_len = len(parent)
        self._len = (self._parent_len // self._global) * rows

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, self._len)
        k, r = divmod(j, self._rows)
        return self._parent[
            epoch * self._parent_len + k * self._global + self._shard.index * self._rows + r
        ]


class BuildExample(grain.transforms.Map):
    """Record -> Example, or the Problem that stopped it. Built lazily so each
    worker process constructs its own tokenizer."""

    def __init__(self, cfg: DataConfig, model_cfg: ModelConfig):
        self.cfg, self.model_cfg = cfg, model_cfg
        self._builder: ExampleBuilder | None = None

    def __getstate__(self):
        return {"cfg": self.cfg, "model_cfg": self.model_cfg, "_builder": None}

    def map(self, rec: Record) -> Example | Problem:
        if self._builder is None:
            self._builder = ExampleBuilder(self.cfg, Tokenizer(self.cfg.tokenizer), self.model_cfg)
        try:
            return self._builder.build(rec)
        except SampleError as e:
            return Problem(e.source, e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - one bad record must not end the run
            return Problem(rec.source, "error", f"{type(e).__name__}: {e}")


class _BatchIterator(grain.DatasetIterator):
    def __init__(self, parent, size: int, collate_fn, drop_remainder: bool):
        super().__init__(parent)
        self._size, self._collate, self._drop = size, collate_fn, drop_remainder

    def __next__(self) -> dict[str, Any]:
        items: list[Example | Problem] = []
        while len(items) < self._size:
            try:
                items.append(next(self._parent))
            except StopIteration:
                if items and not self._drop:
                    break
                raise
        examples = [e for e in items if isinstance(e, Example)]
        skipped = [p for p in items if isinstance(p, Problem)]
        if examples:
            batch = self._collate(examples)
        else:  # every record of this batch failed: an all-padding batch, no loss
            batch = self._collate([])
        names = [e.source for e in examples]
        batch["sources"] = np.array(names + [""] * (self._size - len(names)))
        batch["skipped"] = skipped
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class BatchExamples(grain.IterDataset):
    """Batches of exactly `size` records. A record that failed becomes a
    padding row (no tokens, no loss) and its Problem rides along in
    `batch["skipped"]`, so every process runs the same number of steps per
    epoch whatever it skips."""

    def __init__(self, parent: grain.IterDataset, size: int, collate_fn, drop_remainder: bool):
        super().__init__(parent)
        self._size, self._collate, self._drop = size, collate_fn, drop_remainder

    def __iter__(self):
        return _BatchIterator(self._parent.__iter__(), self._size, self._collate, self._drop)


class Collate:
    def __init__(self, cfg: DataConfig, model_cfg: ModelConfig, pad_id: int):
        self.cfg, self.model_cfg, self.pad_id = cfg, model_cfg, pad_id

    def __call__(self, examples: list[Example]) -> dict[str, np.ndarray]:
        return collate(examples, self.cfg, self.model_cfg, self.pad_id, self.cfg.batch_size)


@dataclasses.dataclass
class Dataset:
    """A data set ready to iterate: this process's records and its skip log."""

    cfg: DataConfig
    model_cfg: ModelConfig
    records: list[Record]  # all processes' records, in file order
    skips: SkipLog
    shard: Shard
    rows_per_step: int  # this process's rows per global batch (a multiple of batch_size)
    plan: PackPlan | None = None  # data.packing: the packed rows of every epoch

    @property
    def global_batch(self) -> int:
        return self.rows_per_step * self.shard.count

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (every process runs this many)."""
        if self.plan is not None:
            return self.plan.steps_per_epoch
        return len(self.records) // self.global_batch

    @property
    def batches_per_epoch(self) -> int:
        """Batches of `batch_size` this process reads per epoch."""
        return self.steps_per_epoch * self.rows_per_step // self.cfg.batch_size

    def grain_dataset(self, drop_remainder: bool = True) -> grain.IterDataset:
        cfg = self.cfg
        options = grain.ReadOptions(
            num_threads=cfg.read_threads,
            prefetch_buffer_size=2 * cfg.read_threads * cfg.batch_size,
        )
        pad_id = Tokenizer(cfg.tokenizer).pad_id
        if self.plan is not None:
            rows = PackedRows(self.records, self.plan, self.shard.index, self.rows_per_step)
            ds = rows.repeat(cfg.num_epochs).map(BuildRow(cfg, self.model_cfg))
            ds = BatchPackedRows(
                ds.to_iter_dataset(options),
                cfg.batch_size,
                CollatePacked(cfg, self.model_cfg, pad_id),
            )
        else:
            ds = grain.MapDataset.source(self.records)
            if cfg.shuffle:
                ds = ds.shuffle(seed=cfg.seed)
            ds = BlockShard(ds, self.shard, self.rows_per_step).repeat(cfg.num_epochs)
            ds = ds.map(BuildExample(cfg, self.model_cfg)).to_iter_dataset(options)
            ds = BatchExamples(
                ds, cfg.batch_size, Collate(cfg, self.model_cfg, pad_id), drop_remainder
            )
        if cfg.workers > 0:
            _absl_flags_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=cfg.workers, per_worker_buffer_size=cfg.prefetch
                )
            )
        return ds

    def __iter__(self) -> DataIterator:
        return DataIterator(self)


class DataIterator(Iterator[dict[str, np.ndarray]]):
    """Batches for training; logs skips; `get_state`/`set_state` for checkpoints."""

    def __init__(self, dataset: Dataset, drop_remainder: bool = True):
        self.dataset = dataset
        self._it = iter(dataset.grain_dataset(drop_remainder))

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        for p in batch.pop("skipped"):
            if self.dataset.skips.add(p):
                log.warning("skipped %s", p)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "skips": self.dataset.skips.state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self.dataset.skips.restore(state["skips"])


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside `absl.app.run` they
    are never parsed, so take the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def load_dataset(
    cfg: DataConfig,
    model_cfg: ModelConfig,
    shard: Shard | None = None,
    rows_per_step: int | None = None,
) -> Dataset:
    """Read and validate the record files and log the records that failed
    validation. Each step's global batch is `rows_per_step` records from each
    process (default: one `batch_size` batch; gradient accumulation reads
    several batches per step)."""
    shard = shard or Shard()
    rows = rows_per_step or cfg.batch_size
    if rows % cfg.batch_size:
        raise ValueError(f"rows per step {rows} is not a multiple of batch_size {cfg.batch_size}")
    if not cfg.data:
        raise ValueError("no data files given (data.data)")
    Tokenizer(cfg.tokenizer).check(model_cfg)  # fail fast on a mismatched tokenizer
    records, problems, seen = load_records(list(cfg.data), cfg.media_root)
    # Record problems are counted by the process that owns their index.
    mine = [p for i, p in enumerate(problems) if i % shard.count == shard.index]
    skips = SkipLog(cfg.skip_log, cfg.max_skip_fraction, max(seen // shard.count, 1))
    for p in mine:
        log.warning("skipped %s", p)
        skips.add(p, fatal_check=False)
    skips.check()
    if len(records) < rows * shard.count:
        raise ValueError(
            f"{len(records)} usable records in {list(cfg.data)} do not fill one global batch "
            f"of {rows * shard.count}: {skips.summary()}"
        )
    plan = None
    if cfg.packing:
        # Every process measures and plans alike; each counts the rejects it owns.
        plan, rejected = plan_dataset(records, cfg, model_cfg, rows * shard.count)
        for i, p in rejected:
            if i % shard.count == shard.index:
                log.warning("skipped %s", p)
                skips.add(p, fatal_check=False)
        skips.check()
        if plan.steps_per_epoch < 1:
            raise ValueError(
                f"{len(plan.lengths)} usable records in {list(cfg.data)} pack into "
                f"{len(plan.rows(0))} rows of ({cfg.row_tokens} tokens, {cfg.row_patches} "
                f"patches), fewer than one global batch of {rows * shard.count}"
            )
    return Dataset(cfg, model_cfg, records, skips, shard, rows, plan)
