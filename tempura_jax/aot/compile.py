"""Compile the trainer's own step for a target it does not run on.

The programs are the trainer's (`train.step.TrainSplit`, the same model
config, mesh, layout, shardings, donation, remat, attention and loss chunk),
lowered with ShapeDtypeStructs under the target's mesh so the attention
dispatcher picks the target's kernels; nothing is read or allocated.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from tempura_jax.aot.batch import Shape, abstract_batch, check, full_row
from tempura_jax.aot.topologies import Target, TopologyError, devices
from tempura_jax.config import ModelConfig
from tempura_jax.peft import runs as peft_runs
from tempura_jax.sharding import batch_shards, make_mesh, resolve_shape
from tempura_jax.train.config import TrainConfig
from tempura_jax.train.flops import batch_flops, passes
from tempura_jax.train.optim import transform
from tempura_jax.train.step import TrainSplit, one_program
from tempura_jax.train.trainer import _runtime

# The learning-rate schedule's length only sets constants of the program.
SCHEDULE_STEPS = 1000
REPLANS = 2  # tighter TPU compiles after an overshoot of the HBM limit


@dataclasses.dataclass
class Program:
    """One compiled executable and what XLA says about it, per device."""

    name: str
    runs: int  # times per optimiser step
    seconds: float
    memory: dict[str, int | None]
    flops: float | None
    error: str | None = None  # the compiler's out-of-memory message
    kernels: dict[str, int] = dataclasses.field(default_factory=dict)  # custom calls
    flops_source: str = "compiled"
    hbm_limit: int | None = None  # what the TPU compiler was told it may use
    replans: int = 0  # compiles again with a tighter limit (see `compile_train`)

    @classmethod
    def compile(
        cls,
        name: str,
        runs: int,
        lowered: Any,
        held_bytes: int = 0,
        devices: int = 1,
        hbm_limit: int | None = None,
    ) -> Program:
        """`devices`: the mesh's, to share out a whole-program FLOPs count.
        `hbm_limit` (TPU): the memory the compiler may plan into. The TPU
        compiler otherwise plans into the whole chip, so a program beside
        held state (the optimiser state while `accumulate` runs) may take
        HBM that state needs (v6e fills it with prefetch buffers)."""
        kernels = custom_calls(lowered.as_text())
        options = {} if hbm_limit is None else {"xla_tpu_max_hbm_size_mib": str(hbm_limit >> 20)}
        t0 = time.perf_counter()
        try:
            compiled = lowered.compile(compiler_options=options or None)
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program whose buffers exceed HBM: that
            # is a measured "does not fit", with its numbers.
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            seconds = time.perf_counter() - t0
            memory = out_of_memory(str(e), held_bytes)
            return cls(name, runs, seconds, memory, None, _line(e), kernels, hbm_limit=hbm_limit)
        seconds = time.perf_counter() - t0
        flops, source = flops_of(compiled), "compiled"
        if not flops:  # the GPU compile-only client has no cost analysis
            flops, source = flops_of(lowered) / devices, "lowered/devices"
        if not flops:  # neither answers (deviceless CUDA): unknown, not zero
            flops, source = None, "unavailable"
        memory = memory_of(compiled, held_bytes)
        return cls(name, runs, seconds, memory, flops, None, kernels, source, hbm_limit)


def custom_calls(text: str) -> dict[str, int]:
    """Custom-call targets in a lowered program and how often: which kernels
    (Mosaic `tpu_custom_call`, Triton, cuDNN attention) the dispatcher chose."""
    import re

    found: dict[str, int] = {}
    for name in re.findall(r"stablehlo\.custom_call @([\w$.\-]+)", text):
        found[name] = found.get(name, 0) + 1
    return found


def _line(e: BaseException) -> str:
    return next((s for s in str(e).splitlines() if "RESOURCE_EXHAUSTED" in s), str(e))[:500]


def out_of_memory(message: str, held_bytes: int = 0) -> dict[str, int | None]:
    """What the compiler's RESOURCE_EXHAUSTED message says it needed, in bytes:
    either "the total memory required for HLO temporaries (17.20G) exceeds
    available HBM (15.75G)" (the temporaries alone), or "Used 15.89G of 15.75G
    hbm" (every buffer of the program). The peak adds the state the program
    does not take (`held_bytes`)."""
    import re

    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def size(pattern: str) -> int | None:
        found = re.search(pattern, message)
        return int(float(found.group(1)) * units[found.group(2)]) if found else None

    temp = size(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)")
    used = size(r"Used ([\d.]+)([KMGT]?) of [\d.]+[KMGT]? hbm")
    program = used if used is not None else temp
    return {
        "arguments": None,
        "temporaries": temp,
        "outputs": None,
        "held": held_bytes,
        "peak": None if program is None else program + held_bytes,
    }


def held(tree: Any) -> int:
    """Bytes per device of a tree of sharded ShapeDtypeStructs."""
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def memory_of(compiled: Any, held_bytes: int = 0) -> dict[str, int]:
    """Per device: arguments, temporaries, outputs, the state held outside the
    program, and the peak (arguments plus outputs not aliased to donated
    arguments, plus temporaries, code and the held state)."""
    m = compiled.memory_analysis()
    args, out, alias = m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes
    temp, code = m.temp_size_in_bytes, m.generated_code_size_in_bytes
    return {
        "arguments": int(args),
        "temporaries": int(temp),
        "outputs": int(out),
        "aliased": int(alias),
        "code": int(code),
        "held": int(held_bytes),
        "peak": int(args + out - alias + temp + code + held_bytes),
    }


def flops_of(compiled: Any) -> float:
    """XLA's FLOPs of a compiled (per device) or lowered (whole program) computation."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per partition
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


@dataclasses.dataclass
class Compiled:
    """What `report` needs from a compile."""

    target: Target
    device_kind: str
    mesh: dict[str, int]
    shape: Shape
    accumulation: int
    model: ModelConfig
    programs: list[Program]
    model_flops: float  # per device per optimiser step

    @property
    def failed(self) -> Program | None:
        """The first program the compiler refused for lack of memory."""
        return next((p for p in self.programs if p.error), None)

    @property
    def heaviest(self) -> Program:
        return self.failed or max(self.programs, key=lambda p: p.memory["peak"])

    @property
    def xla_flops(self) -> float | None:
        """Per device per optimiser step (accumulating programs run `runs` times)."""
        if self.failed or any(p.flops is None for p in self.programs):
            return None
        return sum(p.flops * p.runs for p in self.programs)


def target_mesh(cfg: TrainConfig, t: Target):
    devs = devices(t)
    try:
        resolve_shape(cfg.mesh.shape, len(devs))
    except ValueError:
        raise TopologyError(
            f"mesh.shape {tuple(cfg.mesh.shape)} does not fit {t.name}: it has {len(devs)} devices"
        ) from None
    return make_mesh(cfg.mesh.shape, devs)


@dataclasses.dataclass
class Lowered:
    """The trainer's step programs for a target, lowered, not yet compiled."""

    mesh: Any
    shape: Shape
    accumulation: int
    model: ModelConfig
    # (name, runs per step, jax Lowered, bytes per device of the training state
    # the program does not take but that stays in HBM while it runs)
    programs: list[tuple[str, int, Any, int]]
    model_flops: float  # per device per optimiser step


def lower_train(
    cfg: TrainConfig, base: ModelConfig, t: Target, seq: int, patches: int, frame
) -> Lowered:
    """Lower the step the trainer would run for `cfg` on `t`: one program
    (`step`) without accumulation, else `accumulate` (run `accum` times) and
    `apply`."""
    mesh = target_mesh(cfg, t)
    model_cfg = _runtime(base, cfg, t.platform)
    shards = batch_shards(mesh)
    accum = cfg.batch.accumulation(shards)
    shape = Shape(cfg.batch.per_device * shards, seq, patches, tuple(frame))
    check(shape, model_cfg)
    tx = transform(cfg.optim, cfg.max_steps or SCHEDULE_STEPS)
    with jax.set_mesh(mesh):  # the dispatcher reads the platform from it
        split = TrainSplit.build(peft_runs.abstract_model(model_cfg, cfg.peft), cfg, tx, mesh)
        train, frozen, opt = split.targets(variables=True)
        batch = abstract_batch(shape, cfg.data, model_cfg, mesh)
        fns = split.fns
        if one_program(accum):
            programs = [("step", 1, fns.step.lower(train, frozen, opt, batch), 0)]
        else:
            acc = jax.eval_shape(fns.zeros, train)
            programs = [
                ("accumulate", accum, fns.accumulate.lower(train, frozen, acc, batch), held(opt)),
                ("apply", 1, fns.apply.lower(train, opt, acc), held(frozen)),
            ]
    trained = passes(cfg.optim.freeze_vision_tower, cfg.optim.freeze_llm, cfg.peft)
    sample = cfg.data.max_seq_len if cfg.data.packing else None
    row = batch_flops(full_row(shape, model_cfg, sample), model_cfg, *trained)
    return Lowered(
        mesh, shape, accum, model_cfg, programs, row * shape.rows * accum / mesh.devices.size
    )


def compile_train(
    cfg: TrainConfig,
    base: ModelConfig,
    t: Target,
    seq: int,
    patches: int,
    frame,
    hbm_bytes: int | None = None,
) -> Compiled:
    """Lower and compile the trainer's step for `cfg` on `t`. On TPU each
    program is planned into `hbm_bytes` (default: the chip's) less the state
    it does not take but that stays on the device."""
    lo = lower_train(cfg, base, t, seq, patches, frame)
    hbm = hbm_bytes or t.hbm_bytes

    def limit(held_bytes: int) -> int | None:
        return hbm - held_bytes if t.platform == "tpu" and held_bytes else None

    def planned(name: str, runs: int, lowered: Any, held_bytes: int) -> Program:
        """The TPU compiler treats its limit as a target, not a bound: its
        plan can overshoot by a fraction of a GiB (3B on v6e-8: 0.6 GiB) while
        much of its temporaries are elastic prefetch buffers. So an overshoot
        is compiled again with the limit lowered by it (plus 1%), up to
        `REPLANS` times; only a refusal or a last overshoot is "does not fit"."""
        cap = limit(held_bytes)
        p = Program.compile(name, runs, lowered, held_bytes, lo.mesh.devices.size, cap)
        for n in range(1, REPLANS + 1):
            over = (p.memory["peak"] or 0) - hbm
            if cap is None or p.error is not None or over <= 0 or cap - over <= 0:
                break
            cap = int(cap - over - cap // 100)
            spent = p.seconds
            p = Program.compile(name, runs, lowered, held_bytes, lo.mesh.devices.size, cap)
            p.replans, p.seconds = n, p.seconds + spent
        return p

    return Compiled(
        target=t,
        device_kind=lo.mesh.devices.flat[0].device_kind,
        mesh=dict(lo.mesh.shape),
        shape=lo.shape,
        accumulation=lo.accumulation,
        model=lo.model,
        programs=[planned(*p) for p in lo.programs],
        model_flops=lo.model_flops,
    )
