"""Build a model from an HF checkpoint directory without a random init pass.

The model is created abstractly (`nnx.eval_shape`), then every parameter is
read, checked, converted and placed one tensor at a time, optionally straight
into its sharding on a mesh.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tempura_jax.config import ModelConfig, from_hf_json
from tempura_jax.io.hf_checkpoint import HFCheckpoint
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL
from tempura_jax.params import TensorSpec, param_table, tied_extras
from tempura_jax.sharding import DEFAULT_RULES, Rules, param_sharding


class CheckpointError(ValueError):
    """A checkpoint whose tensors do not match the model its config describes."""


def default_compute_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def abstract_model(cfg: ModelConfig) -> Qwen2_5_VL:
    return nnx.eval_shape(lambda: Qwen2_5_VL(cfg, rngs=nnx.Rngs(0)))


def check_names(
    ckpt_names: set[str], specs: list[TensorSpec], cfg: ModelConfig, where: str
) -> None:
    expected = {s.hf_name for s in specs}
    missing = sorted(expected - ckpt_names)
    unexpected = sorted(ckpt_names - expected - tied_extras(cfg))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{where}: " + "; ".join(parts))


def load_into(
    model: Qwen2_5_VL,
    ckpt: HFCheckpoint,
    *,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Qwen2_5_VL:
    cfg = model.config
    specs = param_table(cfg)
    check_names(ckpt.names(), specs, cfg, str(ckpt.dir))
    dtype = jnp.dtype(cfg.param_dtype)
    for spec in specs:
        var = _variable(model, spec.path)
        _, hf_shape = ckpt.spec(spec.hf_name)
        if hf_shape != spec.hf_shape:
            raise CheckpointError(
                f"{ckpt.file_of(spec.hf_name)}: tensor {spec.hf_name} has shape {hf_shape}, "
                f"config needs {spec.hf_shape}"
            )
        value = spec.to_flax(ckpt.read(spec.hf_name), var.get_value().shape).astype(dtype)
        if mesh is None:
            var.set_value(jnp.asarray(value))
        else:
            sharding = param_sharding(var, mesh, rules)
            var.set_value(
                jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
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
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Qwen2_5_VL:
    """Load `config.json` + safetensors from an HF directory.

    `dtype` is the parameter dtype; `compute_dtype` defaults to float32 on CPU
    and bfloat16 on accelerators. With `mesh`, each tensor is placed directly
    with the sharding its logical axes map to under `rules`.
    """
    cfg = from_hf_json(path).replace(
        param_dtype=str(np.dtype(jnp.dtype(dtype))),
        compute_dtype=compute_dtype or default_compute_dtype(),
        attention_impl=attention_impl,
    )
    return load_into(abstract_model(cfg), HFCheckpoint(path), mesh=mesh, rules=rules)
