"""Model configuration: one frozen dataclass tree, built from HF `config.json`.

HF ships Qwen2.5-VL configs in two layouts: the flat 4.x one (text fields at the
top level, `vision_config` nested) and the nested one (`text_config` and
`vision_config`) that newer transformers write. Both parse to the same tree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

MODEL_TYPE = "qwen2_5_vl"


class ConfigError(ValueError):
    """A config file that does not describe a Qwen2.5-VL model we can build."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 2048
    tokens_per_second: float = 2.0
    hidden_act: str = "silu"
    # Hard-coded in HF's vision tower (blocks and merger), not read from config.
    norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Width of one processor row: C * T * P * P (1176 for Qwen2.5-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (112 px / 14 px / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True  # Qwen2.5-VL-3B ties; 7B/72B do not
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    # Runtime choices, not part of the checkpoint.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention_impl: str = "xla"
    remat_decoder: str = "none"  # see model.layers.REMAT_POLICIES
    remat_vision: str = "none"

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def validate(self) -> ModelConfig:
        t, v = self.text, self.vision
        if t.hidden_size % t.num_attention_heads:
            raise ConfigError(f"text hidden_size {t.hidden_size} not divisible by heads")
        if t.num_attention_heads % t.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if sum(t.mrope_section) * 2 != t.head_dim:
            raise ConfigError(
                f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}"
            )
        if v.hidden_size % v.num_heads or v.head_dim % 4:
            raise ConfigError("vision head_dim must be a multiple of 4 (2D rotary)")
        if v.out_hidden_size != t.hidden_size:
            raise ConfigError(
                f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}"
            )
        if any(not 0 <= i < v.depth for i in v.fullatt_block_indexes):
            raise ConfigError(f"fullatt_block_indexes {v.fullatt_block_indexes} outside depth")
        if v.window_merged < 1:
            raise ConfigError(f"window_size {v.window_size} smaller than one merged patch")
        return self


_TEXT_KEYS = {f.name for f in dataclasses.fields(TextConfig)} - {"mrope_section"}
_VISION_ALIASES = {"in_chans": "in_channels", "spatial_patch_size": "patch_size"}
_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def from_hf_dict(d: dict[str, Any], source: str = "config") -> ModelConfig:
    """Parse an HF Qwen2.5-VL config dict (flat 4.x or nested layout)."""
    model_type = d.get("model_type")
    if model_type != MODEL_TYPE:
        raise ConfigError(f"{source}: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
    text_src = d.get("text_config") or d
    rope = next(
        (
            src[k]
            for src in (text_src, d)
            for k in ("rope_scaling", "rope_parameters")
            if src.get(k)
        ),
        {},
    )
    if "mrope_section" not in rope:
        raise ConfigError(f"{source}: rope_scaling.mrope_section is missing")
    text_kw: dict[str, Any] = {k: text_src[k] for k in _TEXT_KEYS if k in text_src}
    text_kw["mrope_section"] = tuple(int(x) for x in rope["mrope_section"])
    if "rope_theta" not in text_kw and "rope_theta" in rope:
        text_kw["rope_theta"] = rope["rope_theta"]
    # transformers 4.x reads the text config's flag (the root's in the flat layout);
    # 5.x saves it at the root. Both default to untied. A stored lm_head that
    # contradicts a tied config is caught when loading.
    tie = text_src.get("tie_word_embeddings", d.get("tie_word_embeddings", False))
    text_kw["tie_word_embeddings"] = bool(tie)

    vision_src = dict(d.get("vision_config") or {})
    for old, new in _VISION_ALIASES.items():
        if old in vision_src:
            vision_src.setdefault(new, vision_src.pop(old))
    vision_fields = {f.name for f in dataclasses.fields(VisionConfig)} - {"norm_eps"}
    vision_kw = {k: vision_src[k] for k in vision_fields if k in vision_src}
    if "fullatt_block_indexes" in vision_kw:
        vision_kw["fullatt_block_indexes"] = tuple(vision_kw["fullatt_block_indexes"])
    vision_kw.setdefault("out_hidden_size", text_kw.get("hidden_size", TextConfig.hidden_size))

    tokens = {k: d[k] for k in _TOKEN_KEYS if k in d}
    try:
        cfg = ModelConfig(text=TextConfig(**text_kw), vision=VisionConfig(**vision_kw), **tokens)
    except TypeError as e:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"{source}: {e}") from e
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def from_hf_json(path: str | Path) -> ModelConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no config.json") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    return from_hf_dict(d, source=str(path))


def to_hf_dict(cfg: ModelConfig) -> dict[str, Any]:
    """HF config in the nested layout, which transformers >= 4.50 and 5.x both read."""
    t, v = cfg.text, cfg.vision
    text = {k: getattr(t, k) for k in _TEXT_KEYS}
    text.update(
        model_type="qwen2_5_vl_text",
        num_key_value_heads=t.num_key_value_heads,
        rope_scaling={
            "type": "mrope",
            "rope_type": "default",
            "mrope_section": list(t.mrope_section),
        },
        attention_dropout=0.0,
        use_sliding_window=False,
        sliding_window=None,
    )
    vision = {
        f.name: getattr(v, f.name) for f in dataclasses.fields(VisionConfig) if f.name != "norm_eps"
    }
    vision["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    vision["model_type"] = MODEL_TYPE
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": MODEL_TYPE,
        "text_config": text,
        "vision_config": vision,
        "tie_word_embeddings": t.tie_word_embeddings,
        **{k: getattr(cfg, k) for k in _TOKEN_KEYS},
    }


def qwen2_5_vl_3b() -> ModelConfig:
    """Qwen2.5-VL-3B-Instruct."""
    return ModelConfig().validate()


def qwen2_5_vl_7b() -> ModelConfig:
    """Qwen2.5-VL-7B-Instruct: a wider, shallower decoder with an untied head,
    the 3B's vision tower projecting to 3584."""
    text = TextConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    return ModelConfig(text=text, vision=VisionConfig(out_hidden_size=3584)).validate()


def tiny(*, tie_word_embeddings: bool = True, vocab_size: int = 512) -> ModelConfig:
    """A few-MB model with every structural feature of the real one (GQA, windows,
    full-attention blocks, M-RoPE sections) for tests and the CPU demo."""
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=32768,
    )
    vision = VisionConfig(
        depth=4,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        fullatt_block_indexes=(1, 3),
        out_hidden_size=64,
    )
    n = vocab_size
    return ModelConfig(
        text=text,
        vision=vision,
        image_token_id=n - 4,
        video_token_id=n - 3,
        vision_start_token_id=n - 6,
        vision_end_token_id=n - 5,
    ).validate()


PRESETS = {"qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b, "tiny": tiny}
