"""LoRA, QLoRA and DoRA adapters: configuration, the adapted Dense layers,
Hugging Face PEFT export/import and adapter runs (see README "Adapters")."""

from tempura_jax.peft.adapters import (
    Adapter,
    adapters,
    apply,
    dense_layers,
    merge,
    training_dropout,
)
from tempura_jax.peft.config import PeftConfig, PeftConfigError, select
from tempura_jax.peft.hf_format import is_peft_dir

__all__ = [
    "Adapter",
    "PeftConfig",
    "PeftConfigError",
    "adapters",
    "apply",
    "dense_layers",
    "is_peft_dir",
    "merge",
    "training_dropout",
    "select",
]
