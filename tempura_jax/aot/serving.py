"""Serving memory: generate.py's own jitted program (prefill over the prompt,
the vision tower inside it, then the decode loop against the static KV cache)
compiled for a target, weights in the compute dtype and sharded like the
trainer's parameters over the mesh."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from tempura_jax.aot.batch import Shape, abstract_batch, check, full_row
from tempura_jax.aot.compile import Compiled, Program, target_mesh
from tempura_jax.aot.topologies import Target
from tempura_jax.config import ModelConfig
from tempura_jax.data.batching import model_inputs
from tempura_jax.inference.generate import _generate, _Static
from tempura_jax.loading import abstract_model
from tempura_jax.sharding import batch_shards, batch_spec, layout_rules, named, variable_specs
from tempura_jax.train.config import TrainConfig
from tempura_jax.train.flops import batch_flops, matmul_params
from tempura_jax.train.step import with_shardings
from tempura_jax.train.trainer import _runtime


def compile_generate(
    cfg: TrainConfig,
    base: ModelConfig,
    t: Target,
    seq: int,
    patches: int,
    frame,
    rows: int | None,
    new_tokens: int,
) -> Compiled:
    """`rows` prompts of `seq` tokens (`patches` vision patches each), then
    `new_tokens` greedy decode steps (a KV cache of seq + new_tokens);
    default rows: batch.per_device per batch shard."""
    mesh = target_mesh(cfg, t)
    rows = rows or cfg.batch.per_device * batch_shards(mesh)
    model_cfg = _runtime(base, cfg, t.platform)
    model_cfg = model_cfg.replace(param_dtype=model_cfg.compute_dtype)  # as infer.load
    shape = Shape(rows, seq, patches, tuple(frame))
    check(shape, model_cfg)
    rules, _ = layout_rules(cfg.mesh.layout)
    static = _Static(new_tokens, True, (), 0, ())
    with jax.set_mesh(mesh):
        graphdef, state = nnx.split(abstract_model(model_cfg))
        state = with_shardings(state, named(variable_specs(state, mesh, rules), mesh), True)
        batch = abstract_batch(shape, cfg.data, model_cfg, mesh)
        inputs = dataclasses.replace(model_inputs(batch), right_padded=False)  # left-padded
        rows_sh = NamedSharding(mesh, batch_spec(1))
        deltas = jax.ShapeDtypeStruct((rows,), jax.numpy.int32, sharding=rows_sh)
        one = NamedSharding(mesh, PartitionSpec())
        key = jax.eval_shape(lambda: jax.random.key(0))
        knobs = (
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=one),
            jax.ShapeDtypeStruct((), jax.numpy.float32, sharding=one),
            jax.ShapeDtypeStruct((), jax.numpy.float32, sharding=one),
        )
        lowered = _generate.lower(graphdef, state, inputs, deltas, knobs, static, False)
    program = Program.compile("generate", 1, lowered, devices=mesh.devices.size)
    # Forward FLOPs: the prefill over full rows, then each decoded token's
    # matmuls (attention over the cache not counted).
    prefill = batch_flops(full_row(shape, model_cfg), model_cfg, 1.0, 1.0)
    decode = 2 * matmul_params(model_cfg)[0] * (new_tokens - 1)
    return Compiled(
        target=t,
        device_kind=mesh.devices.flat[0].device_kind,
        mesh=dict(mesh.shape),
        shape=shape,
        accumulation=1,
        model=model_cfg,
        programs=[program],
        model_flops=(prefill + decode) * rows / mesh.devices.size,
    )
