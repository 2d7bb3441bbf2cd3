"""The training run's configuration: one frozen tree (model, data, optimiser,
batch, mesh, checkpoints, logging), built by a file under `configs/` and
overridable key by key from the command line (`tempura_jax.overrides`)."""

from __future__ import annotations

import dataclasses

from tempura_jax.data.config import DataConfig
from tempura_jax.train.optim import OptimConfig

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
LAYOUTS = ("fsdp", "zero2")


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """`init`: an HF directory (config.json + safetensors) or a tempura-jax
    checkpoint (a step directory or a run's checkpoint root: its latest step)."""

    init: str = ""
    param_dtype: str = "float32"  # master weights and optimiser state
    compute_dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU/TPU
    attention_impl: str = "xla"
    remat_decoder: str = "none"  # one of REMAT_POLICIES, per decoder layer
    remat_vision: str = "none"  # per vision block
    loss_chunk: int = 1024  # sequence positions per logits block; 0 = full logits

    def __post_init__(self):
        for name in ("remat_decoder", "remat_vision"):
            if getattr(self, name) not in REMAT_POLICIES:
                raise ValueError(f"model.{name} must be one of {REMAT_POLICIES}")


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """global_size = per_device x (data x fsdp devices) x accumulation steps.

    A step sees `global_size` records; the loss is the mean over every
    assistant token of all of them (all devices, all accumulation steps)."""

    global_size: int = 64
    per_device: int = 2

    def accumulation(self, batch_shards: int) -> int:
        micro = self.per_device * batch_shards
        if self.global_size % micro:
            raise ValueError(
                f"batch.global_size {self.global_size} is not a multiple of per_device "
                f"{self.per_device} x {batch_shards} batch shards (data x fsdp) = {micro}"
            )
        return self.global_size // micro


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh (data, fsdp, tensor); one -1 takes the remaining devices.
    `layout`: "fsdp" shards parameters, gradients and optimiser state over
    fsdp (ZeRO-3-like); "zero2" replicates parameters and gradients and
    shards the optimiser state only."""

    shape: tuple[int, int, int] = (-1, 1, 1)
    layout: str = "fsdp"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"mesh.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if list(self.shape).count(-1) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ValueError(f"mesh.shape {self.shape}: positive sizes and at most one -1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between saves (the last step is always saved)
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class DistConfig:
    """Multi-process set-up. With `coordinator` set, this process joins
    `num_processes` (CPU runs use gloo collectives); on TPU pods and SLURM
    `auto` lets JAX find the cluster."""

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    auto: bool = True
    cpu_devices: int | None = None  # simulated CPU devices in this process


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = ""
    stage: int = 1
    workdir: str = "workdir/run"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    model: ModelSetup = ModelSetup()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    batch: BatchConfig = BatchConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    dist: DistConfig = DistConfig()
    log_every: int = 1
    nan_patience: int = 5  # stop after this many non-finite steps in a row
    tensorboard: bool = True
    progress: bool = True

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)
