"""Qwen2.5-VL vision tower: patch embedding, windowed/full blocks, 2x2 merger.

All value-dependent geometry (window permutation, segments, rotary coordinates)
arrives precomputed in `VisionInputs` (see `vision_geometry`), so this module is
shape-static and has no loops over images or windows. The tower runs on a
leading batch axis (one sample's patches per row) so that attention sees the
batch and shards it like the text; flat inputs are a batch of one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from tempura_jax.config import ModelConfig
from tempura_jax.model.layers import (
    Dense,
    GatedMLP,
    RMSNorm,
    apply_rotary,
    inv_freq,
    maybe_remat,
)
from tempura_jax.ops.attention import attention
from tempura_jax.ops.block_local import Bound


def _static(default=None):
    return dataclasses.field(default=default, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class VisionInputs:
    """Per field, optionally with a leading batch axis (B, ...)."""

    pixel_values: jax.Array  # (N, C*T*P*P) processor rows
    window_index: jax.Array  # (M,)
    reverse_index: jax.Array  # (M,)
    window_segments: jax.Array  # (N,)
    frame_segments: jax.Array  # (N,)
    rotary_pos: jax.Array  # (N, 2)
    # Static, checked on the host (`block_local.segment_bound`): every window /
    # frame is one contiguous run of at most this many patches, so attention
    # may skip pairs farther apart (None: dense). Part of the compiled shape.
    window_bound: Bound | None = _static()
    frame_bound: Bound | None = _static()


class VisionAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(bias=True, param_dtype=cfg.param_dtype, rngs=rngs)
        shape = (3, v.num_heads, v.head_dim)
        self.qkv = Dense(
            (v.hidden_size,), shape, ("vit_embed", None, "vit_heads", "head_dim"), **kw
        )
        self.proj = Dense(
            (v.num_heads, v.head_dim),
            (v.hidden_size,),
            ("vit_heads", "head_dim", "vit_embed"),
            **kw,
        )
        self.impl = cfg.attention_impl

    def __call__(self, x, cos, sin, segments, bound: Bound | None = None):
        q, k, v = jnp.moveaxis(self.qkv(x), -3, 0)  # each (B, N, H, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, segment_ids=segments, impl=self.impl, segment_bound=bound)
        return self.proj(out)


class VisionBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, full_attention: bool, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(param_dtype=cfg.param_dtype, rngs=rngs)
        self.full_attention = full_attention
        self.norm1 = RMSNorm(v.hidden_size, v.norm_eps, "vit_embed", **kw)
        self.norm2 = RMSNorm(v.hidden_size, v.norm_eps, "vit_embed", **kw)
        self.attn = VisionAttention(cfg, rngs)
        self.mlp = GatedMLP(
            v.hidden_size,
            v.intermediate_size,
            v.hidden_act,
            ("vit_embed", "vit_mlp"),
            bias=True,
            **kw,
        )

    def __call__(self, x, cos, sin, window_segments, frame_segments, bounds=(None, None)):
        segments = frame_segments if self.full_attention else window_segments
        bound = bounds[1] if self.full_attention else bounds[0]
        x = x + self.attn(self.norm1(x), cos, sin, segments, bound)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm, concatenate each 2x2 patch group, Linear-GELU-Linear."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        kw = dict(param_dtype=cfg.param_dtype, rngs=rngs)
        self.merged = v.hidden_size * v.merge_unit
        self.ln_q = RMSNorm(v.hidden_size, v.norm_eps, "vit_embed", **kw)
        self.fc1 = Dense((self.merged,), (self.merged,), ("vit_merged", "vit_mlp"), bias=True, **kw)
        self.fc2 = Dense(
            (self.merged,), (v.out_hidden_size,), ("vit_mlp", "embed"), bias=True, **kw
        )

    def __call__(self, x):
        x = self.ln_q(x).reshape(*x.shape[:-2], -1, self.merged)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.cfg = v
        self.compute_dtype = cfg.compute_dtype
        self.remat = cfg.remat_vision
        self.patch_embed = Dense(
            (v.patch_dim,),
            (v.hidden_size,),
            ("vit_patch", "vit_embed"),
            bias=False,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        full = set(v.fullatt_block_indexes)
        self.blocks = nnx.List([VisionBlock(cfg, i in full, rngs) for i in range(v.depth)])
        self.merger = PatchMerger(cfg, rngs)

    def rotary(self, rotary_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        """2D rotary: the first half of the frequencies follow the row, the second the column."""
        freqs = inv_freq(self.cfg.head_dim // 2, 10000.0)
        angles = rotary_pos.astype(jnp.float32)[..., None] * freqs  # (..., N, 2, hd/4)
        angles = angles.reshape(*angles.shape[:-2], -1)
        emb = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(emb), jnp.sin(emb)

    def __call__(self, inputs: VisionInputs) -> jax.Array:
        """Merged features (B, M, out_hidden_size), or (M, ...) for flat inputs,
        in processor order."""
        flat = inputs.pixel_values.ndim == 2
        if flat:
            inputs = jax.tree.map(lambda a: a[None], inputs)
        unit = self.cfg.merge_unit
        x = self.patch_embed(inputs.pixel_values.astype(self.compute_dtype))
        b, n, d = x.shape
        x = x.reshape(b, n // unit, unit, d)
        x = jnp.take_along_axis(x, inputs.window_index[:, :, None, None], axis=1).reshape(b, n, d)
        cos, sin = self.rotary(inputs.rotary_pos)
        bounds = (inputs.window_bound, inputs.frame_bound)
        for block in self.blocks:
            x = maybe_remat(
                block,
                self.remat,
                x,
                cos,
                sin,
                inputs.window_segments,
                inputs.frame_segments,
                bounds=bounds,
            )
        out = jnp.take_along_axis(self.merger(x), inputs.reverse_index[:, :, None], axis=1)
        return out[0] if flat else out
