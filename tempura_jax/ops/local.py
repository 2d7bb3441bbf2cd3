"""Run a per-device attention kernel under the ambient mesh with `shard_map`.

Pallas and cuDNN calls are opaque to the SPMD partitioner, so under a mesh
each device runs the kernel on its own batch rows and heads: batch over the
mesh's batch axes, heads over `tensor` (when both q and kv heads divide).
Sequence is never split (segments would cross shards).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from tempura_jax.sharding import BATCH_AXES, TENSOR_AXIS

Kernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def _batch_axes(mesh, batch: int) -> tuple[str, ...]:
    """The mesh's batch axes (in order) whose running product divides the batch."""
    axes, size = [], 1
    for name in BATCH_AXES:
        n = mesh.shape.get(name, 1)
        if n > 1 and batch % (size * n) == 0:
            axes.append(name)
            size *= n
    return tuple(axes)


def run_local(fn: Kernel, q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array | None):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or int(np.prod(list(mesh.shape.values()))) == 1:
        return fn(q, k, v, seg)
    batch = _batch_axes(mesh, q.shape[0]) or None
    t = mesh.shape.get(TENSOR_AXIS, 1)
    heads = TENSOR_AXIS if t > 1 and q.shape[2] % t == 0 and k.shape[2] % t == 0 else None
    spec = P(batch, None, heads, None)
    if seg is None:
        return jax.shard_map(
            lambda q, k, v: fn(q, k, v, None),
            mesh=mesh,
            in_specs=(spec, spec, spec),
            out_specs=spec,
            check_vma=False,
        )(q, k, v)
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec, check_vma=False
    )(q, k, v, seg)
