"""`peft.*`: which Dense layers get low-rank adapters, of what kind, and what
stays fully trainable. Checked before anything is compiled; every error is
one line naming the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tempura_jax.overrides import option

METHODS = ("none", "lora", "qlora", "dora")
BITS = {4: "nf4", 8: "int8"}
FROM_RUN = ("continue", "merge")
# Dense layers that can carry adapters: decoder layers and vision blocks. The
# patch embedding (a convolution in HF), the merger (trained fully, as
# `tune_merger` does) and the head (read as a matrix) never do.
ADAPTABLE = re.compile(r"(model\.layers|visual\.blocks)\.\d+\.[a-z_]+\.[a-z_]+")
MODULE_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_NAMES = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


class PeftConfigError(ValueError):
    """A `peft.*` setting the model cannot honour (raised before any compile)."""


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    method: str = option("none", "none | lora | qlora (quantised frozen base) | dora")
    rank: int = option(128, "adapter rank r (the reference's --lora_rank)")
    alpha: float = option(256.0, "adapter scale alpha; the update is (alpha / r) B A")
    dropout: float = option(0.05, "dropout on the adapter input while training (off at eval)")
    targets: str = option(
        "all",
        "all (every decoder Dense), comma-separated module names (q_proj,v_proj) or a regex "
        "full-matched against dotted paths (model.layers.3.self_attn.q_proj)",
    )
    exclude: str = option(
        "", "comma-separated names or path fragments without adapters (--lora_namespan_exclude)"
    )
    vision: bool = option(False, "adapters on the vision tower's blocks too (--vision_lora)")
    num_modules: int = option(
        -1, "keep only the last N matching modules in model order, -1: all (--num_lora_modules)"
    )
    bits: int = option(4, "qlora: frozen base stored as 4 (nf4) or 8 (int8) bits")
    tile_size: int = option(64, "qlora: input features sharing one quantisation scale")
    trainable: str = option(
        "merger", "comma-separated fully trained parts next to the adapters: merger | none"
    )
    from_run: str = option(
        "continue",
        "model.init is an adapter run: continue its adapters, or merge them into the base",
    )
    init_seed: int = option(0, "RNG seed of the adapters' A matrices")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def dora(self) -> bool:
        return self.method == "dora"

    @property
    def qtype(self) -> str | None:
        return BITS[self.bits] if self.method == "qlora" else None

    def replace(self, **kw) -> PeftConfig:
        return dataclasses.replace(self, **kw)

    def validate(self) -> None:
        """Settings checks that need no model (the targets are checked by `select`)."""
        if self.method not in METHODS:
            raise PeftConfigError(f"peft.method must be one of {METHODS}, got {self.method!r}")
        if not self.enabled:
            return
        if self.rank <= 0:
            raise PeftConfigError(f"peft.rank must be > 0, got {self.rank}")
        if self.alpha <= 0:
            raise PeftConfigError(f"peft.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise PeftConfigError(f"peft.dropout must be in [0, 1), got {self.dropout}")
        if self.bits not in BITS:
            raise PeftConfigError(f"peft.bits must be 4 or 8, got {self.bits}")
        if self.method == "qlora" and self.tile_size <= 0:
            raise PeftConfigError(f"peft.tile_size must be > 0, got {self.tile_size}")
        if self.num_modules == 0 or self.num_modules < -1:
            raise PeftConfigError(f"peft.num_modules must be -1 or > 0, got {self.num_modules}")
        if self.from_run not in FROM_RUN:
            raise PeftConfigError(f"peft.from_run must be one of {FROM_RUN}, got {self.from_run!r}")
        parts = _names(self.trainable)
        if any(p not in ("merger", "none") for p in parts) or ("none" in parts and len(parts) > 1):
            raise PeftConfigError(f"peft.trainable must be merger or none, got {self.trainable!r}")

    @property
    def trains_merger(self) -> bool:
        return "merger" in _names(self.trainable)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _is_names(text: str) -> bool:
    return all(re.fullmatch(r"[A-Za-z0-9_]+", t) for t in _names(text))


def select(cfg: PeftConfig, paths: list[str]) -> list[str]:
    """The dotted Dense paths (in model order) that get adapters.

    `paths` are every Dense of the model; an unknown target name, a regex
    matching nothing adaptable, or a vision target without `peft.vision`
    is an error.
    """
    adaptable = [p for p in paths if ADAPTABLE.fullmatch(p)]
    if not cfg.vision:
        adaptable = [p for p in adaptable if not p.startswith("visual.")]
    if cfg.targets == "all":
        chosen = adaptable
    elif _is_names(cfg.targets):
        names = _names(cfg.targets)
        known = set(MODULE_NAMES) | (set(VISION_NAMES) if cfg.vision else set())
        unknown = [n for n in names if n not in known]
        if unknown:
            hint = "" if cfg.vision else " (vision modules need peft.vision=true)"
            raise PeftConfigError(
                f"peft.targets: unknown module name(s) {unknown}; known: {sorted(known)}{hint}"
            )
        chosen = [p for p in adaptable if p.rsplit(".", 1)[-1] in names]
    else:
        try:
            pattern = re.compile(cfg.targets)
        except re.error as e:
            raise PeftConfigError(f"peft.targets: not a regex: {cfg.targets!r} ({e})") from None
        chosen = [p for p in adaptable if pattern.fullmatch(p)]
    excluded = _names(cfg.exclude)
    chosen = [p for p in chosen if not any(_hits(p, e) for e in excluded)]
    if cfg.num_modules > 0:
        chosen = chosen[-cfg.num_modules :]
    if not chosen:
        raise PeftConfigError(
            f"peft.targets={cfg.targets!r} (exclude={cfg.exclude!r}, vision={cfg.vision}) "
            "matches no adaptable Dense layer"
        )
    return chosen


def _hits(path: str, fragment: str) -> bool:
    parts = path.split(".")
    return fragment in parts or fragment in path and "." in fragment


def to_record(cfg: PeftConfig, targets: list[str]) -> dict:
    """What a checkpoint records: the settings and the resolved target list."""
    return {**dataclasses.asdict(cfg), "resolved_targets": targets}


def from_record(record: dict) -> tuple[PeftConfig, list[str]]:
    fields = {f.name for f in dataclasses.fields(PeftConfig)}
    cfg = PeftConfig(**{k: v for k, v in record.items() if k in fields})
    return cfg, list(record["resolved_targets"])


def check_training(cfg: PeftConfig, optim, adapter_dir: str = "") -> None:
    """Combinations a training run refuses (with `optim`, an OptimConfig)."""
    cfg.validate()
    if adapter_dir and not Path(adapter_dir, "adapter_config.json").is_file():
        raise PeftConfigError(f"model.adapter={adapter_dir}: no adapter_config.json there")
    if not cfg.enabled:
        return
    if optim.freeze_llm:
        raise PeftConfigError(
            f"peft.method={cfg.method} with optim.freeze_llm=true is not supported: the "
            "decoder's adapters would not train"
        )
    if cfg.vision and optim.freeze_vision_tower:
        raise PeftConfigError(
            "peft.vision=true with optim.freeze_vision_tower=true is not supported"
        )
    if cfg.trains_merger and not optim.tune_merger:
        raise PeftConfigError(
            "peft.trainable=merger with optim.tune_merger=false: say peft.trainable=none"
        )
