"""Build a model from an HF directory or a tempura-jax (Orbax) checkpoint
without a random init pass.

The model is created abstractly (`nnx.eval_shape`); a parameter source yields
(Flax path, array in Flax layout) one tensor at a time after checking names,
shapes and dtypes; each tensor is cast and placed, optionally straight into
its sharding on a mesh.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tempura_jax import checkpoint
from tempura_jax.config import ModelConfig, from_hf_json
from tempura_jax.io.hf_checkpoint import HFCheckpoint
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL
from tempura_jax.params import TensorSpec, param_table, tied_extras
from tempura_jax.sharding import DEFAULT_RULES, Rules, param_sharding

Source = Iterator[tuple[TensorSpec, np.ndarray]]


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not match the model its config describes."""


def default_compute_dtype(platform: str | None = None) -> str:
    """`platform`: the one compiled for (default: this process's backend)."""
    return "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"


def abstract_model(cfg: ModelConfig) -> Qwen2_5_VL:
    return nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))


def flax_shapes(cfg: ModelConfig) -> dict[tuple, tuple[int, ...]]:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return {path: v.get_value().shape for path, v in nnx.to_flat_state(state)}


def check_names(found: set[str], expected: set[str], allowed: set[str], where: str) -> None:
    missing = sorted(expected - found)
    unexpected = sorted(found - expected - allowed)
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:5])}")
    if parts:
        raise CheckpointError(f"{where}: " + "; ".join(parts))


def check_float(dtype: np.dtype, name: str, where: str) -> None:
    if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
        raise CheckpointError(f"{where}: tensor {name} has dtype {dtype}, expected a float type")


def hf_source(ckpt: HFCheckpoint, cfg: ModelConfig) -> Source:
    """Tensors of an HF checkpoint in Flax layout and stored dtype; headers are
    checked against the config before the first tensor is read."""
    specs = param_table(cfg)
    check_names(ckpt.names(), {s.hf_name for s in specs}, tied_extras(cfg), str(ckpt.dir))
    for spec in specs:
        where = str(ckpt.file_of(spec.hf_name))
        dtype, shape = ckpt.spec(spec.hf_name)
        check_float(dtype, spec.hf_name, where)
        if shape != spec.hf_shape:
            raise CheckpointError(
                f"{where}: tensor {spec.hf_name} has shape {shape}, config needs {spec.hf_shape}"
            )
    if cfg.text.tie_word_embeddings and "lm_head.weight" in ckpt.names():
        check_tied_head(ckpt)
    shapes = flax_shapes(cfg)
    return ((s, s.to_flax(ckpt.read(s.hf_name), shapes[s.path])) for s in specs)


def check_tied_head(ckpt: HFCheckpoint) -> None:
    """A tied config must not silently drop a stored head that is really different."""
    head, embed = ckpt.read("lm_head.weight"), ckpt.read("model.embed_tokens.weight")
    if head.shape != embed.shape or head.tobytes() != embed.tobytes():
        raise CheckpointError(
            f"{ckpt.file_of('lm_head.weight')}: tensor lm_head.weight differs from "
            "model.embed_tokens.weight but the config ties them (tie_word_embeddings)"
        )


def orbax_source(params: checkpoint.OrbaxParams, cfg: ModelConfig) -> Source:
    """Tensors of a tempura-jax checkpoint, checked against the config up front,
    then read one layer group at a time."""
    specs = param_table(cfg)
    where = str(params.dir)
    found = {"/".join(k) for k in params.specs}
    check_names(found, {"/".join(checkpoint.key_of(s.path)) for s in specs}, set(), where)
    shapes = flax_shapes(cfg)
    for spec in specs:
        key = checkpoint.key_of(spec.path)
        name, (dtype, shape), need = "/".join(key), params.specs[key], shapes[spec.path]
        check_float(dtype, name, where)
        if shape != need:
            raise CheckpointError(f"{where}: tensor {name} has shape {shape}, config needs {need}")
    return _grouped_reads(params, specs)


def _grouped_reads(params: checkpoint.OrbaxParams, specs: list[TensorSpec]) -> Source:
    for _, members in itertools.groupby(specs, key=lambda s: checkpoint.group_of(s.path)):
        group = list(members)
        arrays = params.read([checkpoint.key_of(s.path) for s in group])
        for s in group:
            yield s, arrays[checkpoint.key_of(s.path)]


def load_into(
    model: Qwen2_5_VL, source: Source, *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES
) -> Qwen2_5_VL:
    dtype = jnp.dtype(model.config.param_dtype)
    for spec, value in source:
        var = _variable(model, spec.path)
        value = value.astype(dtype)
        if mesh is None:
            var.set_value(jnp.asarray(value))
        else:
            sharding = param_sharding(var, mesh, rules)
            var.set_value(
                jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])
            )
    return model


def _variable(model: nnx.Module, path) -> nnx.Variable:
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def load_pretrained(
    path: str | Path,
    *,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    attention_impl: str = "xla",
    remat_decoder: str = "none",
    remat_vision: str = "none",
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    adapter: str | Path | None = None,
    merge_adapters: bool = False,
) -> Qwen2_5_VL:
    """Load an HF directory (config.json + safetensors), a tempura-jax
    checkpoint, an adapter run's checkpoint (its base with the adapters
    applied) or a PEFT adapter directory (on its base_model_name_or_path).

    `dtype` is the parameter dtype; `compute_dtype` defaults to float32 on CPU
    and bfloat16 on accelerators. With `mesh`, each tensor is placed directly
    with the sharding its logical axes map to under `rules`. `adapter`: a PEFT
    adapter directory added on top; `merge_adapters` folds every adapter into
    its kernel (a plain model again).
    """
    from tempura_jax.peft import hf_format, runs
    from tempura_jax.peft.adapters import merge

    kw = dict(
        dtype=dtype,
        compute_dtype=compute_dtype,
        attention_impl=attention_impl,
        remat_decoder=remat_decoder,
        remat_vision=remat_vision,
        mesh=mesh,
        rules=rules,
    )
    load = functools.partial(load_pretrained, **kw)
    if hf_format.is_peft_dir(path):
        model = runs.load_peft_dir(path, load)
    elif runs.run_record(path) is not None:
        model = runs.load_run(path, load)
    else:
        model = _load_full(path, **kw)
    if adapter:
        hf_format.load(model, adapter)
    if merge_adapters:
        merge(model)
    runs.place(model, mesh, rules)
    return model


def _load_full(
    path, *, dtype, compute_dtype, attention_impl, remat_decoder, remat_vision, mesh, rules
) -> Qwen2_5_VL:
    if checkpoint.is_checkpoint(path):
        params = checkpoint.OrbaxParams(path)
        cfg = from_hf_json(params.config_path)
    else:
        params, cfg = None, from_hf_json(path)
    cfg = cfg.replace(
        param_dtype=str(np.dtype(jnp.dtype(dtype))),
        compute_dtype=compute_dtype or default_compute_dtype(),
        attention_impl=attention_impl,
        remat_decoder=remat_decoder,
        remat_vision=remat_vision,
    )
    source = hf_source(HFCheckpoint(path), cfg) if params is None else orbax_source(params, cfg)
    return load_into(abstract_model(cfg), source, mesh=mesh, rules=rules)
