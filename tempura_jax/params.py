"""The one table between HF hub tensor names and Flax parameter paths.

HF stores linear weights as (out, in) and the Conv3d patch embedding as
(out, C, T, P, P); Flax kernels are (in..., out...) with head structure kept.
A transposed entry maps through the 2D view (out, prod(rest)), so both
directions are exact reshapes/transposes: HF -> Flax -> HF is bit-identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tempura_jax.config import ModelConfig

Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    hf_name: str
    path: Path
    hf_shape: tuple[int, ...]
    transpose: bool  # HF (out, ...) vs Flax (..., out)

    def to_flax(self, w: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
        if self.transpose:
            w = w.reshape(self.hf_shape[0], -1).T
        return w.reshape(flax_shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.transpose:
            return np.ascontiguousarray(x.reshape(-1, self.hf_shape[0]).T).reshape(self.hf_shape)
        return x.reshape(self.hf_shape)


def param_table(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor of a Qwen2.5-VL checkpoint, in hub order of appearance."""
    v, t = cfg.vision, cfg.text
    specs: list[TensorSpec] = []

    def linear(hf: str, path: Path, out_dim: int, in_dim: int, bias: bool) -> None:
        specs.append(TensorSpec(f"{hf}.weight", (*path, "kernel"), (out_dim, in_dim), True))
        if bias:
            specs.append(TensorSpec(f"{hf}.bias", (*path, "bias"), (out_dim,), False))

    def norm(hf: str, path: Path, dim: int) -> None:
        specs.append(TensorSpec(f"{hf}.weight", (*path, "scale"), (dim,), False))

    def mlp(hf: str, path: Path, dim: int, hidden: int, bias: bool) -> None:
        linear(f"{hf}.gate_proj", (*path, "gate_proj"), hidden, dim, bias)
        linear(f"{hf}.up_proj", (*path, "up_proj"), hidden, dim, bias)
        linear(f"{hf}.down_proj", (*path, "down_proj"), dim, hidden, bias)

    patch_shape = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    specs.append(
        TensorSpec(
            "visual.patch_embed.proj.weight", ("visual", "patch_embed", "kernel"), patch_shape, True
        )
    )
    d = v.hidden_size
    for i in range(v.depth):
        hf, p = f"visual.blocks.{i}", ("visual", "blocks", i)
        norm(f"{hf}.norm1", (*p, "norm1"), d)
        norm(f"{hf}.norm2", (*p, "norm2"), d)
        linear(f"{hf}.attn.qkv", (*p, "attn", "qkv"), 3 * d, d, True)
        linear(f"{hf}.attn.proj", (*p, "attn", "proj"), d, d, True)
        mlp(f"{hf}.mlp", (*p, "mlp"), d, v.intermediate_size, True)
    merged = d * v.merge_unit
    norm("visual.merger.ln_q", ("visual", "merger", "ln_q"), d)
    linear("visual.merger.mlp.0", ("visual", "merger", "fc1"), merged, merged, True)
    linear("visual.merger.mlp.2", ("visual", "merger", "fc2"), v.out_hidden_size, merged, True)

    h, hd = t.hidden_size, t.head_dim
    specs.append(
        TensorSpec("model.embed_tokens.weight", ("model", "embed_tokens"), (t.vocab_size, h), False)
    )
    for i in range(t.num_hidden_layers):
        hf, p = f"model.layers.{i}", ("model", "layers", i)
        norm(f"{hf}.input_layernorm", (*p, "input_layernorm"), h)
        linear(
            f"{hf}.self_attn.q_proj",
            (*p, "self_attn", "q_proj"),
            t.num_attention_heads * hd,
            h,
            True,
        )
        linear(
            f"{hf}.self_attn.k_proj",
            (*p, "self_attn", "k_proj"),
            t.num_key_value_heads * hd,
            h,
            True,
        )
        linear(
            f"{hf}.self_attn.v_proj",
            (*p, "self_attn", "v_proj"),
            t.num_key_value_heads * hd,
            h,
            True,
        )
        linear(
            f"{hf}.self_attn.o_proj",
            (*p, "self_attn", "o_proj"),
            h,
            t.num_attention_heads * hd,
            False,
        )
        norm(f"{hf}.post_attention_layernorm", (*p, "post_attention_layernorm"), h)
        mlp(f"{hf}.mlp", (*p, "mlp"), h, t.intermediate_size, False)
    norm("model.norm", ("model", "norm"), h)
    if not t.tie_word_embeddings:
        linear("lm_head", ("lm_head",), t.vocab_size, h, False)
    return specs


def tied_extras(cfg: ModelConfig) -> set[str]:
    """Tensors a checkpoint may carry that the model ignores (a tied head's copy)."""
    return {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()
