"""Adapter runs on disk and how a model is built for, and from, one.

An adapter run's checkpoints hold only what trains (the adapters and the
fully trained parts such as the merger); its record names the base it
adapts:

    tempura_checkpoint.json  "peft": {"config": {... "resolved_targets": [...]},
                                      "base": {"path": DIR, "merge_adapters": bool}}

so `load_pretrained(run)` = load the base (itself possibly an adapter run,
merged) -> add the recorded adapters -> fill them from the step's params/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from tempura_jax import checkpoint
from tempura_jax.peft import hf_format
from tempura_jax.peft.adapters import adapters, apply, merge
from tempura_jax.peft.config import PeftConfig, PeftConfigError, from_record, to_record
from tempura_jax.peft.quant import KernelScale, QuantizedKernel
from tempura_jax.sharding import DEFAULT_RULES, Rules, param_sharding

Loader = Callable[..., nnx.Module]  # load_pretrained with the caller's dtypes and mesh


def run_record(path: str | Path) -> dict | None:
    """The "peft" entry of a checkpoint's record (None: a full checkpoint)."""
    if not checkpoint.is_checkpoint(path):
        return None
    return checkpoint.OrbaxParams(path).record.get("peft")


def load_run(path: str | Path, load: Loader) -> nnx.Module:
    """An adapter run's latest (or given) step: base + adapters with its values."""
    params = checkpoint.OrbaxParams(path)
    rec = params.record["peft"]
    model = load(rec["base"]["path"], merge_adapters=rec["base"]["merge_adapters"])
    cfg, targets = from_record(rec["config"])
    apply(model, cfg, targets)
    keys = list(params.specs)
    values = params.read(keys)
    for key in keys:
        var = _variable(model, key, params.dir)
        need = var[...].shape
        if tuple(values[key].shape) != tuple(need):
            raise PeftConfigError(
                f"{params.dir}: tensor {'/'.join(key)} has shape {values[key].shape}, "
                f"the adapters need {need}"
            )
        var.set_value(jnp.asarray(values[key], var[...].dtype))
    return model


def _variable(model: nnx.Module, key: tuple[str, ...], where: Path) -> nnx.Variable:
    node: Any = model
    for k in key:
        node = node[int(k)] if k.isdigit() else getattr(node, k, None)
        if node is None:
            raise PeftConfigError(f"{where}: tensor {'/'.join(key)} is not in the model")
    return node


def load_peft_dir(path: str | Path, load: Loader, base: str | None = None) -> nnx.Module:
    """A PEFT adapter directory on its base (`base`, else its base_model_name_or_path)."""
    _, raw = hf_format.read_config(path)
    base = base or raw.get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise PeftConfigError(
            f"{Path(path) / hf_format.CONFIG_FILE}: base_model_name_or_path {base!r} is not a "
            "local directory; pass the base (model.init=..., or load_pretrained(base, adapter=DIR))"
        )
    model = load(base, merge_adapters=True)
    hf_format.load(model, path)
    return model


def place(model: nnx.Module, mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> None:
    """Put the adapters' and quantised kernels' arrays in their shardings."""
    if mesh is None:
        return
    kinds = (nnx.LoRAParam, QuantizedKernel, KernelScale)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, kinds):
            var.set_value(jax.device_put(var[...], param_sharding(var, mesh, rules)))


def training_model(
    init: str, adapter_dir: str, cfg: PeftConfig, load: Loader
) -> tuple[nnx.Module, dict | None]:
    """The model a run starts from and the "peft" record its checkpoints carry.

    - peft off: the init (an adapter run or a PEFT directory merged in) trains fully;
    - model.init an adapter run: continue its adapters, or merge them and add new ones;
    - model.adapter=DIR: continue that PEFT adapter on model.init;
    - otherwise new adapters on model.init.
    """
    rec = run_record(init)
    if not cfg.enabled:
        model = load(init, merge_adapters=True)
        if adapter_dir:
            hf_format.load(model, adapter_dir)
            merge(model)
        return model, None
    if rec is not None and cfg.from_run == "continue":
        saved, targets = from_record(rec["config"])
        if (saved.method, saved.rank) != (cfg.method, cfg.rank):
            raise PeftConfigError(
                f"peft.from_run=continue: {init} has {saved.method} adapters of rank "
                f"{saved.rank}, the config asks {cfg.method} rank {cfg.rank}; match them or "
                "set peft.from_run=merge"
            )
        return load(init), {"config": rec["config"], "base": rec["base"]}
    merged = rec is not None
    model = load(init, merge_adapters=True)
    if adapter_dir:
        used = hf_format.load(
            model, adapter_dir, cfg.method, bits=cfg.bits, tile_size=cfg.tile_size
        )
        targets = list(adapters(model))
        return model, {
            "config": to_record(used, targets),
            "base": {"path": str(Path(init).absolute()), "merge_adapters": merged},
        }
    targets = apply(model, cfg)
    return model, {
        "config": to_record(cfg, targets),
        "base": {"path": str(Path(init).absolute()), "merge_adapters": merged},
    }


def abstract_model(model_cfg, cfg: PeftConfig) -> nnx.Module:
    """Shapes only (no weights read, nothing computed): the model with the
    adapters (and QLoRA's quantised kernels) `cfg` adds, for ahead-of-time
    compiles and memory plans."""
    from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL

    def build():
        model = Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(0))
        if cfg.enabled:
            apply(model, cfg)
        return model

    return nnx.eval_shape(build)
