"""The training loop: one code path for one CPU, one GPU or a pod slice.

set up processes and the mesh -> load or resume the model, optimiser and
data position -> for each step: accumulate micro-batches, apply the update
-> log, checkpoint, stop on preemption or divergence.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from tempura_jax import checkpoint, overrides
from tempura_jax.config import ModelConfig, from_hf_json, to_hf_dict
from tempura_jax.data.batching import repad
from tempura_jax.data.pipeline import DataIterator, Dataset, Shard, load_dataset
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.io.hf_checkpoint import HFCheckpoint
from tempura_jax.loading import abstract_model, default_compute_dtype, load_pretrained
from tempura_jax.model.inputs import is_right_padded
from tempura_jax.ops.block_local import describe
from tempura_jax.peft import runs as peft_runs
from tempura_jax.peft.config import check_training
from tempura_jax.sharding import (
    batch_shards,
    layout_rules,
    local_batch_shards,
    make_mesh,
)
from tempura_jax.train import checkpointing as ckpt
from tempura_jax.train.config import TrainConfig
from tempura_jax.train.flops import batch_flops, passes, peak_flops
from tempura_jax.train.metrics import MetricsLog
from tempura_jax.train.optim import GROUPS, schedules, transform
from tempura_jax.train.step import (
    TrainSplit,
    agreed_bounds,
    batch_bounds,
    batch_shardings,
    bound_code,
    check_text_bound,
    check_vision_bounds,
    one_program,
)


def _in_cluster() -> bool:
    """A launcher that started several tasks (TPU pod workers, srun, mpirun)."""
    env = os.environ
    return (
        "TPU_WORKER_HOSTNAMES" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def _on_tpu_vm() -> bool:
    """A Cloud TPU VM: JAX finds the slice's other hosts (GCE metadata or GKE
    variables) itself, so initialise even without a launcher's variables (a
    single-host VM becomes a one-process cluster, which changes nothing)."""
    try:
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm  # private; may move
    except ImportError:
        return False
    return bool(running_in_cloud_tpu_vm)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


@dataclasses.dataclass
class Outcome:
    status: str  # "finished", "preempted", "already_finished"
    step: int
    records: list[dict[str, Any]]  # this run's step metrics

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


def init_distributed(cfg: TrainConfig) -> None:
    d = cfg.dist
    if d.cpu_devices:
        jax.config.update("jax_num_cpu_devices", d.cpu_devices)
    if d.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id)
    elif d.auto and (_in_cluster() or _on_tpu_vm()):
        jax.distributed.initialize()


class Preemption:
    """SIGTERM sets a flag the loop reads between steps (all processes agree)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _compute_dtype(cfg: TrainConfig, platform: str | None = None) -> str:
    m = cfg.model.compute_dtype
    return default_compute_dtype(platform) if m == "auto" else m


def _runtime(model_cfg: ModelConfig, cfg: TrainConfig, platform: str | None = None) -> ModelConfig:
    """The run's model config; `platform`: the one compiled for (AOT compiles)."""
    m = cfg.model
    return model_cfg.replace(
        param_dtype=m.param_dtype,
        compute_dtype=_compute_dtype(cfg, platform),
        attention_impl=m.attention_impl,
        remat_decoder=m.remat_decoder,
        remat_vision=m.remat_vision,
    )


def _source_record(init: str, tokenizer: str) -> dict[str, Any]:
    """Where the weights came from and where the HF side files live, so the
    converter can export a run's checkpoint with its tokenizer."""
    path = Path(init).absolute()
    record: dict[str, Any] = {
        "format_version": 1,
        "kind": "training",
        "source": str(path),
        "tokenizer_dir": str(Path(tokenizer).absolute()) if tokenizer else None,
    }
    if checkpoint.is_checkpoint(path):
        params = checkpoint.OrbaxParams(path)
        for key in ("hf_files_dir", "tokenizer_dir"):
            if params.record.get(key):
                record["hf_files_dir"] = str(params.record_path.parent / params.record[key])
                break
        record["tied_head_in_source"] = bool(params.record.get("tied_head_in_source"))
    else:
        record["hf_files_dir"] = str(path)
        names = HFCheckpoint(path).names()
        record["tied_head_in_source"] = "lm_head.weight" in names
    return record


def _lookup(tree: dict, dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def _jsonish(x: Any) -> Any:
    return json.loads(json.dumps(x))


class Trainer:
    def __init__(self, cfg: TrainConfig, devices: list[jax.Device] | None = None):
        """`devices`: the mesh's devices (default: all devices of all processes)."""
        self.cfg = cfg
        check_training(cfg.peft, cfg.optim, cfg.model.adapter)  # before anything compiles
        self.adapters = cfg.peft.enabled  # checkpoints hold the trained parts only
        self.peft_record: dict | None = None
        self.workdir = Path(cfg.workdir).absolute()
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(cfg.mesh.shape, devices)
        shards = batch_shards(self.mesh)
        self.accum = cfg.batch.accumulation(shards)
        self.rows = cfg.batch.per_device * local_batch_shards(self.mesh)
        self.param_rules, _ = layout_rules(cfg.mesh.layout)
        self.ckpts = ckpt.RunCheckpoints(
            self.workdir / "checkpoints",
            keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
        )
        self.resume_step = self.ckpts.latest_step()
        if self.resume_step is not None:
            self._check_resumable(self.ckpts.read_meta(self.resume_step).get("config", {}))
        self.model_cfg = self._model_config()
        self.data_cfg = cfg.data.replace(batch_size=self.rows, num_epochs=cfg.epochs)
        self.dataset: Dataset = load_dataset(
            self.data_cfg, self.model_cfg, Shard.from_jax(), rows_per_step=self.rows * self.accum
        )
        self.pad_id = Tokenizer(self.data_cfg.tokenizer).pad_id
        self.skipped = 0  # records skipped by all processes, as of the last batch
        self.shapes: set[tuple] = set()  # (sequence, patches, vision bounds) run so far
        self.capacity = np.zeros(2)  # this step's token and patch slots, padding included
        self.total_steps = cfg.epochs * self.dataset.steps_per_epoch
        self.run_steps = min(self.total_steps, cfg.max_steps or self.total_steps)
        if self.total_steps < 1:
            raise ValueError("the data set does not fill one global batch")
        self.tx = transform(cfg.optim, self.total_steps)
        self.schedules = schedules(cfg.optim, self.total_steps)
        self.passes = passes(cfg.optim.freeze_vision_tower, cfg.optim.freeze_llm, cfg.peft)
        kind = jax.devices()[0].device_kind
        self.peak = peak_flops(kind)

    # Keys that fix the data order and the schedule: a run resumes only with the same.
    RESUME_KEYS = (
        "epochs",
        "seed",
        "batch.global_size",
        "batch.per_device",
        "mesh.shape",
        "data.data",
        "data.seed",
        "data.shuffle",
        "data.packing",
        "data.pack_seq_len",
        "data.pack_patches",
        "data.pack_window",
        "data.pack_sort",
        "optim.warmup_ratio",
        "peft.method",
        "peft.rank",
        "peft.targets",
    )

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        now = overrides.to_dict(self.cfg)
        diffs = []
        for key in self.RESUME_KEYS:
            a, b = _lookup(saved, key), _lookup(now, key)
            if a is not None and _jsonish(a) != _jsonish(b):
                diffs.append(f"{key}: checkpoint {a!r}, now {b!r}")
        if diffs:
            raise ValueError(
                f"{self.ckpts.root}/{self.resume_step}: cannot resume with a different "
                f"data order or schedule ({'; '.join(diffs)}); use a new workdir"
            )

    def _model_config(self) -> ModelConfig:
        if self.resume_step is not None:
            return _runtime(from_hf_json(self.ckpts.root / checkpoint.CONFIG), self.cfg)
        if not self.cfg.model.init:
            raise ValueError("model.init is empty: give an HF directory or a checkpoint")
        init = Path(self.cfg.model.init)
        if checkpoint.is_checkpoint(init):
            return _runtime(from_hf_json(checkpoint.OrbaxParams(init).config_path), self.cfg)
        return _runtime(from_hf_json(init), self.cfg)

    # -- state ----------------------------------------------------------------------------
    def _build(self):
        cfg, mesh = self.cfg, self.mesh
        m = cfg.model
        load = functools.partial(
            load_pretrained,
            dtype=m.param_dtype,
            compute_dtype=_compute_dtype(cfg),
            attention_impl=m.attention_impl,
            remat_decoder=m.remat_decoder,
            remat_vision=m.remat_vision,
            mesh=mesh,
            rules=self.param_rules,
        )
        if self.resume_step is None:
            model, self.peft_record = peft_runs.training_model(m.init, m.adapter, cfg.peft, load)
        elif self.adapters:  # the frozen base is not in the checkpoint: the record names it
            model = load(self.ckpts.root)
        else:
            model = abstract_model(self.model_cfg)
        split = TrainSplit.build(model, cfg, self.tx, mesh)
        train, frozen, self.fns = split.train, split.frozen, split.fns
        it: DataIterator = iter(self.dataset)
        meta: dict[str, Any] = {
            "step": 0,
            "updates": 0,
            "nan_streak": 0,
            "rng": np.asarray(jax.random.key_data(jax.random.key(cfg.seed))).tolist(),
        }
        if self.resume_step is None:
            opt_state = self.fns.init_opt(train)
        else:
            t_target, f_target, opt_target = split.targets()
            saved = (t_target,) if self.adapters else (t_target, f_target)
            out = self.ckpts.restore(self.resume_step, ckpt.params_tree(*saved), opt_target)
            train = ckpt.fill_state(train, out[checkpoint.PARAMS])
            if not self.adapters:
                frozen = ckpt.fill_state(frozen, out[checkpoint.PARAMS])
            opt_state = out[ckpt.OPT_ITEM]
            it.set_state(out[ckpt.DATA_ITEM])
            meta = out[ckpt.META_ITEM]
        return train, frozen, opt_state, it, meta

    # -- batches --------------------------------------------------------------------------
    def _global_batch(self, local: dict[str, Any]) -> tuple[dict[str, jax.Array], float, Any]:
        """This process's rows -> global arrays; all processes agree on one
        bucket shape and on the vision bounds first. Returns the batch, its
        model FLOPs (all rows) and the step for its bounds."""
        local = {k: v for k, v in local.items() if k != "sources"}
        # What `model_inputs` states; packed rows say right_padded=False instead.
        if not self.data_cfg.packing and not is_right_padded(local["segment_ids"]):
            raise ValueError("batch rows are not one sample followed by padding")
        check_vision_bounds(local, self.fns.vision_bounds)
        check_text_bound(local, self.fns.text_bound)
        run = self.fns.vision_bounds
        bounds = batch_bounds(local) if self.cfg.model.vision_bounds == "batch" else run
        flops = batch_flops(local, self.model_cfg, *self.passes)
        self.skipped = self.dataset.skips.skipped
        if jax.process_count() > 1:
            # One gather: the bucket shape, the FLOPs and the records skipped
            # (each process counts those of its own shard) of every process.
            mine = np.array(
                [
                    local["input_ids"].shape[1],
                    local["pixel_values"].shape[1],
                    flops,
                    self.skipped,
                    *map(bound_code, bounds),
                ]
            )
            every = multihost_utils.process_allgather(mine)
            bounds = agreed_bounds(every[:, 4:], bounds, run)
            seq, patches = int(every[:, 0].max()), int(every[:, 1].max())
            local = repad(local, seq, patches, self.pad_id)
            flops = float(every[:, 2].sum())
            self.skipped = int(every[:, 3].sum())
        shardings = batch_shardings(local, self.mesh)
        arrays = {
            k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()
        }
        (b, s), p = arrays["input_ids"].shape, arrays["pixel_values"].shape[1]
        self.shapes.add((s, p, bounds))
        self.bounds = bounds
        self.capacity += (b * s, b * p)
        return arrays, flops, self.fns.bounded(bounds)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Outcome:
        # The ambient mesh lets per-device attention kernels shard_map themselves.
        with jax.set_mesh(self.mesh):
            return self._run()

    def _run(self) -> Outcome:
        cfg = self.cfg
        if self.resume_step is not None and self.resume_step >= self.run_steps:
            return Outcome("already_finished", self.resume_step, [])
        train, frozen, opt_state, it, meta = self._build()
        if self.resume_step is None:
            record = _source_record(cfg.model.init, cfg.data.tokenizer)
            if self.peft_record is not None:
                record["peft"] = self.peft_record
            self.ckpts.write_model_files(to_hf_dict(self.model_cfg), record)
        step = int(meta["step"])
        out = MetricsLog(
            self.workdir,
            total_steps=self.run_steps,
            start_step=step,
            tensorboard=cfg.tensorboard,
            progress=cfg.progress,
            enabled=self.is_main,
        )
        self._announce(out, step)
        preempt = Preemption()
        records: list[dict[str, Any]] = []
        status = "finished"
        try:
            while step < self.run_steps:
                t0 = time.perf_counter()
                # One micro-batch per step runs as one program (fns.step): no gradient sums.
                acc = None if one_program(self.accum) else self.fns.zeros(train)
                flops, data_time = 0.0, 0.0
                self.capacity = np.zeros(2)
                before = it.get_state()  # the data position this step starts from
                try:
                    for _ in range(self.accum):
                        d0 = time.perf_counter()
                        batch, f, fns = self._global_batch(next(it))
                        data_time += time.perf_counter() - d0
                        flops += f
                        if acc is not None:
                            acc = fns.accumulate(train, frozen, acc, batch)
                except Exception:
                    # SIGTERM sent to the process group also ends Grain's worker
                    # processes mid-step: save the state the step started from.
                    if not preempt.requested:
                        raise
                    self._save(step, train, frozen, opt_state, before, meta, force=True)
                    status = "preempted"
                    out.message(f"SIGTERM during step {step + 1}: saved step {step}; exiting")
                    break
                updates = int(meta["updates"])
                if acc is None:
                    train, opt_state, m = fns.step(train, frozen, opt_state, batch)
                else:
                    train, opt_state, m = self.fns.apply(train, opt_state, acc)
                    acc = None  # free the gradient sums before the next step makes its own
                m = jax.device_get(m)
                dt = time.perf_counter() - t0
                step += 1
                loss = float(m["loss"])
                meta["step"] = step
                if bool(m["updated"]):
                    meta["updates"] = updates + 1
                meta["nan_streak"] = 0 if bool(m["finite"]) else int(meta["nan_streak"]) + 1
                record = self._record(step, m, updates, dt, data_time, flops)
                records.append(record)
                if step % cfg.log_every == 0 or step == self.run_steps:
                    out.write(record)
                out.advance(step, loss)
                if not bool(m["finite"]):
                    out.message(
                        f"step {step}: non-finite loss {loss} or grad norm "
                        f"{float(m['grad_norm'])}; update skipped "
                        f"({meta['nan_streak']}/{cfg.nan_patience} in a row)"
                    )
                    if meta["nan_streak"] >= cfg.nan_patience:
                        self.ckpts.wait()
                        raise TrainingDiverged(
                            f"{meta['nan_streak']} non-finite steps in a row at step {step}; "
                            f"last good checkpoint: {self.ckpts.latest_step()} in {self.ckpts.root}"
                        )
                stop = preempt.agreed()
                # A skipped update leaves the state as it was: no periodic save for
                # it, but the last step and a preemption are always saved.
                periodic = bool(m["finite"]) and step % cfg.checkpoint.every == 0
                if stop or periodic or step == self.run_steps:
                    self._save(step, train, frozen, opt_state, it.get_state(), meta, force=stop)
                if stop:
                    status = "preempted"
                    out.message(f"SIGTERM: saved step {step} to {self.ckpts.root}; exiting")
                    break
            self.ckpts.wait()
        finally:
            preempt.restore()
            out.close()
            self.ckpts.wait()
        return Outcome(status, step, records)

    def _save(self, step, train, frozen, opt_state, data_state, meta, force=False) -> None:
        meta = {**meta, "config": overrides.to_dict(self.cfg)}
        saved = (train,) if self.adapters else (train, frozen)
        self.ckpts.save(step, ckpt.params_tree(*saved), opt_state, data_state, meta, force=force)

    def _record(self, step, m, updates, dt, data_time, flops) -> dict[str, Any]:
        n_dev = self.mesh.devices.size
        rec: dict[str, Any] = {
            "step": step,
            "epoch": step / self.dataset.steps_per_epoch,
            "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]),
            **{f"lr_{g}": float(self.schedules[g](updates)) for g in GROUPS},
            "updated": bool(m["updated"]),
            "target_tokens": int(m["target_tokens"]),
            "tokens": int(m["tokens"]),
            "patches": int(m["patches"]),
            "step_time": dt,
            "data_time": data_time,
            "tokens_per_s": int(m["tokens"]) / dt,
            "skipped_records": self.skipped,  # all processes
            "compiled_shapes": len(self.shapes),  # distinct step shapes (one compile each)
            "vision_bounds": [describe(b) for b in self.bounds],  # (window, frame), last batch
            "padding_tokens": 1 - int(m["tokens"]) / max(float(self.capacity[0]), 1.0),
            "padding_patches": 1 - int(m["patches"]) / max(float(self.capacity[1]), 1.0),
        }
        rec["mfu"] = flops / (dt * self.peak * n_dev) if self.peak else None
        return rec

    def _announce(self, out: MetricsLog, step: int) -> None:
        cfg = self.cfg
        mesh = dict(self.mesh.shape)
        lines = [
            f"tempura-jax train: stage {cfg.stage} ({cfg.name}) -> {self.workdir}",
            f"  devices {self.mesh.devices.size} x {jax.devices()[0].device_kind} over "
            f"{jax.process_count()} process(es); mesh {mesh}; layout {cfg.mesh.layout}",
            f"  batch {cfg.batch.global_size} = {cfg.batch.per_device}/device x "
            f"{batch_shards(self.mesh)} shards x {self.accum} accumulation",
            f"  {len(self.dataset.records)} records, {self.dataset.steps_per_epoch} steps/epoch, "
            f"{self.run_steps} of {self.total_steps} steps; "
            + (f"resuming at step {step}" if step else f"from {cfg.model.init}"),
            f"  attention bounds: vision {[describe(b) for b in self.fns.vision_bounds]} "
            f"({cfg.model.vision_bounds}), decoder {describe(self.fns.text_bound)}",
            "  config: " + json.dumps(overrides.to_dict(cfg), sort_keys=True),
        ]
        for line in lines:
            out.message(line)


def train(cfg: TrainConfig) -> Outcome:
    init_distributed(cfg)
    return Trainer(cfg).run()
