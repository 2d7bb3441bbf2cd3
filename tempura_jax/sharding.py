"""Logical axis names -> mesh axes, by rules (MaxText style).

Parameters carry logical `axes` metadata; a rule table maps each logical name
to a mesh axis. A dimension is sharded only when the mesh axis exists, is not
already used by another dimension of the same tensor, and divides it evenly;
otherwise it is replicated, so any model runs on any mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
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
    return named(variable_specs(nnx.state(model, nnx.Param), mesh, rules), mesh)


AXES = ("data", "fsdp", "tensor")
TENSOR_AXIS = "tensor"
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both


def resolve_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Fill one -1 with the remaining devices; the product must be `n_devices`."""
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {n_devices} devices")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n_devices:
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {np.prod(shape)} devices, have {n_devices}"
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (all processes)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_shape(shape, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # CPU or an unusual topology
        grid = np.array(devices).reshape(shape)
    return Mesh(grid, AXES)


def batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def local_batch_shards(mesh: Mesh) -> int:
    """How many batch shards ((data, fsdp) positions) this process feeds. A
    shard whose tensor-parallel devices span processes would need identical
    rows from each: refused, keep the tensor axis within a host."""
    pid, owned = jax.process_index(), 0
    devices = mesh.devices.reshape(mesh.shape["data"], mesh.shape["fsdp"], -1)
    for i, j in np.ndindex(devices.shape[:2]):
        procs = {d.process_index for d in devices[i, j]}
        if pid in procs:
            if len(procs) > 1:
                raise ValueError(
                    f"batch shard {(i, j)} spans processes {sorted(procs)}: "
                    "the tensor axis must stay within one host"
                )
            owned += 1
    return owned


def without(rules: Rules, mesh_axis: str) -> Rules:
    """The rules with one mesh axis dropped (e.g. replicated parameters for ZeRO-2)."""
    return tuple((name, None if axis == mesh_axis else axis) for name, axis in rules)


def layout_rules(layout: str, rules: Rules = DEFAULT_RULES) -> tuple[Rules, Rules]:
    """(parameter rules, optimiser-state rules) for a layout: "fsdp" shards
    both over fsdp; "zero2" keeps parameters (and so gradients) whole on each
    fsdp rank and shards only the optimiser state."""
    if layout == "fsdp":
        return rules, rules
    if layout == "zero2":
        return without(rules, "fsdp"), rules
    raise ValueError(f"unknown layout {layout!r}")


def variable_specs(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """A PartitionSpec per Variable of `state` (a prefix of its array tree)."""
    return jax.tree.map(
        lambda v: param_sharding(v, mesh, rules).spec,
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def named(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def batch_spec(ndim: int, batch_axis: int = 0) -> PartitionSpec:
    spec: list = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return PartitionSpec(*spec)


def like_params(tree: Any, params: Any, specs: Any) -> Any:
    """PartitionSpecs for a tree holding parameter-shaped leaves (optimiser
    state): a leaf whose path ends with a parameter's path and has its shape
    gets that parameter's spec; anything else (step counts) is replicated.
    `params` (arrays or shape structs) and `specs` share one structure."""
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    flat_params, _ = jax.tree_util.tree_flatten_with_path(params)
    by_path = {
        path_keys(path): (spec, tuple(leaf.shape))
        for (path, leaf), spec in zip(flat_params, flat_specs, strict=True)
    }
    lengths = sorted({len(p) for p in by_path}, reverse=True)

    def pick(path, leaf):
        keys = path_keys(path)
        for n in lengths:
            hit = by_path.get(keys[-n:]) if len(keys) >= n else None
            if hit is not None and tuple(leaf.shape) == hit[1]:
                return hit[0]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(pick, tree)


def path_keys(path) -> tuple:
    """A pytree key path as plain names and indices (dict keys, attributes,
    sequence indices), without the `.value` node of nnx Variables."""
    out = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey) and p.name == "value":
            continue  # nnx Variable nodes
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        out.append(p)
    return tuple(out)
