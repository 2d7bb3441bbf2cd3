"""Hugging Face PEFT's adapter format <-> our adapters.

A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors`
with keys `base_model.model.<module>.lora_A.weight` (r, in),
`.lora_B.weight` (out, r), `.lora_magnitude_vector` (out,) for DoRA, and the
fully trained modules (`modules_to_save`, our merger) under their own names.
We write the module names transformers >= 4.52 uses in memory
(`model.language_model.layers.N...`, `model.visual.blocks.N...`), as PEFT
0.21 itself does; on reading, hub-style names (`model.layers.N...`,
`visual.blocks.N...`) are accepted too.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tempura_jax.config import ModelConfig
from tempura_jax.io.hf_checkpoint import hub_name
from tempura_jax.io.safetensors import SafetensorsFile, write_file
from tempura_jax.params import TensorSpec, param_table
from tempura_jax.peft.adapters import adapters, apply, dense_layers
from tempura_jax.peft.config import PeftConfig, PeftConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
MERGER = ("visual", "merger")


def is_peft_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def to_memory_name(hub: str) -> str:
    """Hub module name -> transformers' in-memory name."""
    if hub.startswith("model."):
        return "model.language_model." + hub[len("model.") :]
    if hub.startswith("visual."):
        return "model." + hub
    return hub


def to_hub_name(name: str) -> str:
    return hub_name(name.removeprefix(PREFIX))


def _modules(cfg: ModelConfig) -> dict[str, TensorSpec]:
    """Dotted Dense path -> the TensorSpec of its kernel."""
    return {
        ".".join(str(p) for p in s.path[:-1]): s for s in param_table(cfg) if s.path[-1] == "kernel"
    }


def _merger_specs(cfg: ModelConfig) -> list[TensorSpec]:
    return [s for s in param_table(cfg) if s.path[:2] == MERGER]


def _variable(model: nnx.Module, path) -> nnx.Variable:
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def export(
    model: nnx.Module,
    peft_cfg: PeftConfig,
    out: str | Path,
    *,
    base_model: str | None,
    with_merger: bool,
) -> Path:
    """Write the model's adapters (and the merger, when trained) as a PEFT directory."""
    out = Path(out)
    cfg = model.config
    kernels = _modules(cfg)
    tensors: dict[str, np.ndarray] = {}
    targets = []
    for path, ad in adapters(model).items():
        module = to_memory_name(kernels[path].hf_name.removesuffix(".weight"))
        targets.append(module)
        r = ad.lora_a.shape[-1]
        a = np.asarray(ad.lora_a[...], np.float32).reshape(-1, r).T
        b = np.asarray(ad.lora_b[...], np.float32).reshape(r, -1).T
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b)
        if ad.magnitude is not None:
            m = np.asarray(ad.magnitude[...], np.float32).reshape(-1)
            tensors[f"{PREFIX}{module}.lora_magnitude_vector"] = m
    if with_merger:
        for spec in _merger_specs(cfg):
            value = np.asarray(_variable(model, spec.path)[...], np.float32)
            tensors[PREFIX + to_memory_name(spec.hf_name)] = spec.to_hf(value)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": peft_cfg.rank,
        "lora_alpha": peft_cfg.alpha,
        "lora_dropout": peft_cfg.dropout,
        "target_modules": sorted(targets),
        "use_dora": peft_cfg.dora,
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": ["merger"] if with_merger else None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".peft-", dir=out))
    try:
        specs = [(k, v.dtype, v.shape) for k, v in tensors.items()]
        write_file(tmp / WEIGHTS_FILE, specs, iter(tensors.values()))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            os.replace(tmp / name, out / name)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return out


def read_config(path: str | Path, method: str | None = None) -> tuple[PeftConfig, dict]:
    """A PeftConfig from adapter_config.json (`method` may ask for qlora)."""
    file = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PeftConfigError(f"{file}: cannot read the adapter config: {e}") from None
    if raw.get("peft_type") != "LORA":
        raise PeftConfigError(f"{file}: peft_type {raw.get('peft_type')!r}, only LORA is read")
    for key, ok in (("use_rslora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if raw.get(key, ok) != ok:
            raise PeftConfigError(f"{file}: {key}={raw[key]!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if raw.get(key):
            raise PeftConfigError(f"{file}: per-module {key} is not supported")
    dora = bool(raw.get("use_dora"))
    chosen = method or ("dora" if dora else "lora")
    if (chosen == "dora") != dora:
        raise PeftConfigError(f"{file}: use_dora={dora} but peft.method={chosen}")
    saved = raw.get("modules_to_save") or []
    cfg = PeftConfig(
        method=chosen,
        rank=int(raw["r"]),
        alpha=float(raw["lora_alpha"]),
        dropout=float(raw.get("lora_dropout", 0.0)),
        trainable="merger" if "merger" in saved else "none",
    )
    return cfg, raw


def load(
    model: nnx.Module, path: str | Path, method: str | None = None, **settings: Any
) -> PeftConfig:
    """Add the adapters of a PEFT directory to `model` (in place) with their
    values; `settings` (bits, tile_size, ...) complete the config for QLoRA."""
    path = Path(path)
    peft_cfg, _ = read_config(path, method)
    peft_cfg = peft_cfg.replace(**settings)
    mcfg = model.config
    file = SafetensorsFile(path / WEIGHTS_FILE)
    tensors = {k: file.read(k).astype(np.float32) for k in file.keys()}
    by_hub = {s.hf_name.removesuffix(".weight"): p for p, s in _modules(mcfg).items()}
    found: dict[str, dict[str, np.ndarray]] = {}
    merger: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        hub = to_hub_name(key)
        for part in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
            if hub.endswith(part):
                module = hub.removesuffix(part)
                if module not in by_hub:
                    raise PeftConfigError(f"{path / WEIGHTS_FILE}: {key}: no such module")
                found.setdefault(by_hub[module], {})[part] = value
                break
        else:
            if not hub.startswith("visual.merger."):
                raise PeftConfigError(f"{path / WEIGHTS_FILE}: unexpected tensor {key}")
            merger[hub] = value
    layers = dense_layers(model)
    targets = [p for p in layers if p in found]
    vision = any(t.startswith("visual.") for t in targets)
    peft_cfg = peft_cfg.replace(vision=vision, targets="|".join(map(re.escape, targets)))
    apply(model, peft_cfg, targets)
    for p in targets:
        ad, parts = layers[p].adapter, found[p]
        _set(ad.lora_a, parts[".lora_A.weight"].T, path, p)
        _set(ad.lora_b, parts[".lora_B.weight"].T, path, p)
        if peft_cfg.dora:
            _set(ad.magnitude, parts[".lora_magnitude_vector"], path, p)
    for spec in _merger_specs(mcfg):
        if spec.hf_name in merger:
            var = _variable(model, spec.path)
            var.set_value(
                jnp.asarray(spec.to_flax(merger[spec.hf_name], var.shape), var[...].dtype)
            )
    return peft_cfg


def _set(var: nnx.Variable, value: np.ndarray, where: Path, module: str) -> None:
    if value.size != var[...].size:
        raise PeftConfigError(
            f"{where / WEIGHTS_FILE}: {module}: {value.shape} does not fit {var.shape}"
        )
    var.set_value(jnp.asarray(value.reshape(var.shape), var[...].dtype))
