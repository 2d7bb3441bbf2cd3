"""AdamW with TEMPURA's parameter groups, per-group schedules, a weight-decay
mask, global-norm clipping and freezing.

Groups by parameter path: under `visual` but not `merger` -> "vision"
(2e-6), `merger` -> "merger" (1e-5), everything else -> "llm" (1e-5).
Frozen parameters are outside the optimiser's `wrt` filter: they get no
gradient, no optimiser state and are never written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import optax
from flax import nnx

from tempura_jax.overrides import option
from tempura_jax.sharding import path_keys

GROUPS = ("vision", "merger", "llm")
NO_DECAY_LEAVES = ("scale", "bias")  # RMSNorm scales and biases


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    vision_lr: float = option(2e-6, "peak LR of the vision tower (except the merger)")
    merger_lr: float = option(1e-5, "peak LR of the merger")
    llm_lr: float = option(1e-5, "peak LR of the decoder and head")
    weight_decay: float = option(0.1, "AdamW decay, not on norms and biases")
    b1: float = option(0.9, "AdamW beta1")
    b2: float = option(0.999, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    warmup_ratio: float = option(0.03, "share of the steps in linear warm-up")
    min_lr_ratio: float = option(0.0, "cosine decays to peak LR x this")
    max_grad_norm: float = option(1.0, "global-norm gradient clipping")
    freeze_vision_tower: bool = option(
        False, "no updates (and no optimiser state) for the vision tower"
    )
    freeze_llm: bool = option(False, "no updates (and no optimiser state) for the decoder and head")
    tune_merger: bool = option(True, "train the merger (even with the tower frozen)")

    def lr(self, group: str) -> float:
        return {"vision": self.vision_lr, "merger": self.merger_lr, "llm": self.llm_lr}[group]


def group_of(path: Sequence) -> str:
    names = path_keys(path)
    if "merger" in names:
        return "merger"
    return "vision" if names and names[0] == "visual" else "llm"


def decays(path: Sequence) -> bool:
    return path_keys(path)[-1] not in NO_DECAY_LEAVES


def trainable(path: Sequence, cfg: OptimConfig) -> bool:
    return {
        "vision": not cfg.freeze_vision_tower,
        "merger": cfg.tune_merger,
        "llm": not cfg.freeze_llm,
    }[group_of(path)]


def schedule(peak: float, total_steps: int, cfg: OptimConfig) -> optax.Schedule:
    """Linear warm-up from 0 over warmup_ratio of the steps, then cosine."""
    total = max(int(total_steps), 1)
    warmup = min(int(round(cfg.warmup_ratio * total)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, total, end_value=peak * cfg.min_lr_ratio
    )


def schedules(cfg: OptimConfig, total_steps: int) -> dict[str, optax.Schedule]:
    return {g: schedule(cfg.lr(g), total_steps, cfg) for g in GROUPS}


def transform(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip the global norm of the trainable gradients, then AdamW per group."""
    scheds = schedules(cfg, total_steps)

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda p, _: group_of(p), params)

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda p, _: decays(p), params)

    per_group = {
        g: optax.adamw(
            scheds[g], cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        )
        for g in GROUPS
    }
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm), optax.multi_transform(per_group, labels)
    )


def trainable_filter(cfg: OptimConfig, peft=None):
    """An nnx filter: the parameters the optimiser owns. With adapters
    (`peft`, a tempura_jax.peft.PeftConfig that is enabled): the adapters and
    the fully trained parts (the merger) only; the base stays frozen."""

    def keep(path, value) -> bool:
        if peft is not None and peft.enabled:
            if isinstance(value, nnx.LoRAParam):
                return True
            merger = group_of(path) == "merger"
            return isinstance(value, nnx.Param) and peft.trains_merger and merger
        return isinstance(value, nnx.Param) and trainable(path, cfg)

    return keep


def make_optimizer(model: nnx.Module, cfg: OptimConfig, total_steps: int) -> nnx.Optimizer:
    wrt = trainable_filter(cfg)
    if not jax.tree.leaves(nnx.state(model, wrt)):
        raise ValueError("every parameter is frozen: nothing to train")
    return nnx.Optimizer(model, transform(cfg, total_steps), wrt=wrt)
