"""Training configs as code: a registry of named experiments.

Each module defines `get_config(stage) -> TrainConfig` and may define
`prepare(cfg)`, run once by process 0 before training (the demo writes its
synthetic data and tiny model there).
"""

from __future__ import annotations

import importlib
from types import ModuleType

CONFIGS = {
    "demo": "configs.demo",
    "qwen2_5_vl_3b": "configs.qwen2_5_vl_3b",
    "qwen2_5_vl_7b": "configs.qwen2_5_vl_7b",
}


def get(name: str) -> ModuleType:
    try:
        return importlib.import_module(CONFIGS[name])
    except KeyError:
        raise ValueError(f"unknown config {name!r}; known: {sorted(CONFIGS)}") from None
