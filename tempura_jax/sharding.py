"""Logical axis names -> mesh axes, by rules (MaxText style).

Parameters carry logical `axes` metadata; a rule table maps each logical name
to a mesh axis. A dimension is sharded only when the mesh axis exists, is not
already used by another dimension of the same tensor, and divides it evenly;
otherwise it is replicated, so any model runs on any mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | None]]

DEFAULT_RULES: Rules = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vit_embed", "fsdp"),
    ("vit_mlp", "tensor"),
    ("vit_heads", "tensor"),
    ("vit_merged", "fsdp"),
    ("vit_patch", None),
)


def partition_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
    table = dict(rules)
    used: set[str] = set()
    out: list[str | None] = []
    for name, dim in zip(axes, shape, strict=True):
        mesh_axis = table.get(name) if name is not None else None
        ok = (
            mesh_axis in mesh.shape
            and mesh_axis not in used
            and mesh.shape[mesh_axis] > 1
            and dim % mesh.shape[mesh_axis] == 0
        )
        out.append(mesh_axis if ok else None)
        if ok:
            used.add(mesh_axis)
    return PartitionSpec(*out)


def param_sharding(
    variable: nnx.Variable, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    axes = variable.get_metadata().get("axes")
    shape = variable.get_value().shape
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, partition_spec(axes, shape, mesh, rules))


def model_shardings(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """A state pytree of NamedSharding for every parameter of `model`."""
    return jax.tree.map(
        lambda v: param_sharding(v, mesh, rules),
        nnx.state(model, nnx.Param),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
