"""The training run's configuration: one frozen tree (model, data, optimiser,
batch, mesh, checkpoints, logging), built by a file under `configs/` and
overridable key by key from the command line (`tempura_jax.overrides`)."""

from __future__ import annotations

import dataclasses

from tempura_jax.data.config import DataConfig
from tempura_jax.ops.attention import IMPLS
from tempura_jax.overrides import option
from tempura_jax.peft.config import PeftConfig
from tempura_jax.train.optim import OptimConfig

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
LAYOUTS = ("fsdp", "zero2")
VISION_BOUNDS = ("run", "batch")  # model.vision_bounds


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """`init`: an HF directory (config.json + safetensors) or a tempura-jax
    checkpoint (a step directory or a run's checkpoint root: its latest step)."""

    init: str = option(
        "",
        "HF directory or tempura-jax checkpoint (a step, or a run's checkpoints/: its latest)",
    )
    param_dtype: str = option("float32", "master weights and optimiser state")
    compute_dtype: str = option(
        "auto", "activations and matmuls; auto: float32 on CPU, bfloat16 on GPU/TPU"
    )
    attention_impl: str = option("xla", " | ".join(IMPLS) + " (tempura_jax.ops.attention)")
    remat_decoder: str = option("none", "per decoder layer: " + " | ".join(REMAT_POLICIES))
    remat_vision: str = option("none", "per vision block: " + " | ".join(REMAT_POLICIES))
    loss_chunk: int = option(
        512, "sequence positions per fp32 logits block in the loss (per_device x chunk x vocab)"
    )
    adapter: str = option(
        "", "a PEFT adapter directory to continue training (peft on) or merge into model.init"
    )
    vision_bounds: str = option(
        "run",
        "block-local vision attention: run (one static bound pair from the config and pixel "
        "budget) | batch (each batch's tightest exact pair; one compile per distinct pair)",
    )

    def __post_init__(self):
        for name in ("remat_decoder", "remat_vision"):
            if getattr(self, name) not in REMAT_POLICIES:
                raise ValueError(f"model.{name} must be one of {REMAT_POLICIES}")
        if self.vision_bounds not in VISION_BOUNDS:
            raise ValueError(f"model.vision_bounds must be one of {VISION_BOUNDS}")


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """global_size = per_device x (data x fsdp devices) x accumulation steps.

    A step sees `global_size` records; the loss is the mean over every
    assistant token of all of them (all devices, all accumulation steps)."""

    global_size: int = option(
        64, "records per optimiser step, over all devices and accumulation steps"
    )
    per_device: int = option(
        2, "records per device per micro-batch; accumulation makes up global_size"
    )

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

    shape: tuple[int, int, int] = option(
        (-1, 1, 1), "(data, fsdp, tensor) device counts; one -1 takes the remaining devices"
    )
    layout: str = option(
        "fsdp",
        "fsdp: shard parameters, gradients, optimiser state (ZeRO-3); zero2: optimiser only",
    )

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"mesh.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if list(self.shape).count(-1) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ValueError(f"mesh.shape {self.shape}: positive sizes and at most one -1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = option(500, "steps between checkpoints (the last step is always saved)")
    keep: int = option(3, "complete checkpoints kept; older ones are deleted")
    async_save: bool = option(True, "write checkpoints in the background while training goes on")


@dataclasses.dataclass(frozen=True)
class DistConfig:
    """Multi-process set-up. With `coordinator` set, this process joins
    `num_processes` (CPU runs use gloo collectives); on TPU pods and SLURM
    `auto` lets JAX find the cluster."""

    coordinator: str | None = option(
        None, "HOST:PORT of process 0: join a multi-process run (CPU runs use gloo)"
    )
    num_processes: int = option(1, "processes in a coordinator run")
    process_id: int = option(0, "this process's index in a coordinator run")
    auto: bool = option(True, "let jax.distributed find TPU slices, SLURM and MPI launches")
    cpu_devices: int | None = option(
        None, "simulated CPU devices in this process (tests, sharding checks)"
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = option("", "the config's name (set by its file under configs/)")
    stage: int = option(1, "1: masked event prediction; 2: dense event captioning")
    workdir: str = option(
        "workdir/run", "checkpoints, metrics.jsonl and TensorBoard logs; a run resumes from here"
    )
    seed: int = option(
        0, "the run's RNG key, saved with checkpoints (the data order uses data.seed)"
    )
    epochs: int = option(1, "passes over the data; the LR schedule spans them")
    max_steps: int | None = option(None, "stop early (the schedule still spans `epochs`)")
    model: ModelSetup = ModelSetup()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    peft: PeftConfig = PeftConfig()
    batch: BatchConfig = BatchConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    dist: DistConfig = DistConfig()
    log_every: int = option(1, "steps between metrics.jsonl and TensorBoard records")
    nan_patience: int = option(
        5, "stop after this many non-finite steps in a row (last good checkpoint kept)"
    )
    tensorboard: bool = option(True, "write TensorBoard scalars under workdir")
    progress: bool = option(True, "show a progress bar (process 0)")

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)
