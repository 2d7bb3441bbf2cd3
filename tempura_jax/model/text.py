"""Qwen2 decoder with GQA, q/k/v bias and chunked multimodal RoPE (M-RoPE)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from tempura_jax.config import ModelConfig, TextConfig
from tempura_jax.model.kv_cache import KVCache
from tempura_jax.model.layers import (
    Dense,
    GatedMLP,
    RMSNorm,
    apply_rotary,
    inv_freq,
    maybe_remat,
    param,
)
from tempura_jax.ops.attention import attention


def mrope_cos_sin(position_ids: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """position_ids (3, B, S) -> cos, sin (B, S, head_dim), float32.

    Chunked sections (Qwen2/2.5-VL, not Qwen3-VL's interleave): the first
    `mrope_section[0]` frequency pairs rotate with the temporal id, the next
    with the row id, the last with the column id.
    """
    freqs = inv_freq(cfg.head_dim, cfg.rope_theta)  # (hd/2,)
    angles = position_ids.astype(jnp.float32)[..., None] * freqs  # (3, B, S, hd/2)
    bounds = [0, *itertools.accumulate(cfg.mrope_section)]
    angles = jnp.concatenate(
        [angles[axis, ..., lo:hi] for axis, (lo, hi) in enumerate(itertools.pairwise(bounds))], -1
    )
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class TextAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        kw = dict(param_dtype=cfg.param_dtype, rngs=rngs)
        d, hd = t.hidden_size, t.head_dim
        self.q_proj = Dense(
            (d,), (t.num_attention_heads, hd), ("embed", "heads", "head_dim"), bias=True, **kw
        )
        self.k_proj = Dense(
            (d,), (t.num_key_value_heads, hd), ("embed", "kv_heads", "head_dim"), bias=True, **kw
        )
        self.v_proj = Dense(
            (d,), (t.num_key_value_heads, hd), ("embed", "kv_heads", "head_dim"), bias=True, **kw
        )
        self.o_proj = Dense(
            (t.num_attention_heads, hd), (d,), ("heads", "head_dim", "embed"), bias=False, **kw
        )
        self.impl = cfg.attention_impl

    def _qkv(self, x, cos, sin):
        q = apply_rotary(self.q_proj(x), cos, sin)
        return q, apply_rotary(self.k_proj(x), cos, sin), self.v_proj(x)

    def __call__(self, x, cos, sin, segment_ids, right_padded=False, segment_bound=None):
        q, k, v = self._qkv(x, cos, sin)
        out = attention(
            q,
            k,
            v,
            segment_ids=segment_ids,
            causal=True,
            impl=self.impl,
            right_padded=right_padded,
            segment_bound=segment_bound,
        )
        return self.o_proj(out)

    def cached(self, x, cos, sin, segment_ids, kv_cache, layer: int, kv_segments, prefill: bool):
        """Attention that also writes this call's K/V into `kv_cache` at its index.
        Prefill (an empty cache) attends within the prompt, so it can use any
        kernel; decoding attends over the cache slots."""
        q, k, v = self._qkv(x, cos, sin)
        index = kv_cache.index
        ck, cv = (
            jax.lax.dynamic_update_slice_in_dim(c[layer], new.astype(c[layer].dtype), index, 1)
            for c, new in ((kv_cache.k, k), (kv_cache.v, v))
        )
        if prefill:
            out = attention(q, k, v, segment_ids=segment_ids, causal=True, impl=self.impl)
        else:
            out = attention(
                q,
                ck,
                cv,
                segment_ids=segment_ids,
                causal=True,
                impl=self.impl,
                kv_segment_ids=kv_segments,
                q_offset=index,
            )
        return self.o_proj(out), (ck, cv)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        kw = dict(param_dtype=cfg.param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, "embed", **kw)
        self.self_attn = TextAttention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, "embed", **kw)
        self.mlp = GatedMLP(
            t.hidden_size, t.intermediate_size, t.hidden_act, ("embed", "mlp"), bias=False, **kw
        )

    def __call__(self, x, cos, sin, segment_ids, right_padded=False, segment_bound=None):
        h = self.input_layernorm(x)
        x = x + self.self_attn(h, cos, sin, segment_ids, right_padded, segment_bound)
        return x + self.mlp(self.post_attention_layernorm(x))

    def cached(self, x, cos, sin, segment_ids, kv_cache, layer, kv_segments, prefill):
        h, kv = self.self_attn.cached(
            self.input_layernorm(x), cos, sin, segment_ids, kv_cache, layer, kv_segments, prefill
        )
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class TextModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = t
        self.remat = cfg.remat_decoder
        self.embed_tokens = param(
            rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), cfg.param_dtype
        )
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(t.num_hidden_layers)])
        self.norm = RMSNorm(
            t.hidden_size, t.rms_norm_eps, "embed", param_dtype=cfg.param_dtype, rngs=rngs
        )

    def embed(self, input_ids: jax.Array, dtype: str) -> jax.Array:
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(dtype)

    def __call__(
        self, x, position_ids, segment_ids, right_padded: bool = False, segment_bound=None
    ):
        """`right_padded`: every row is one sequence then padding (see `attention`);
        `segment_bound`: every sample (id > 0) is a run of at most that many tokens."""
        cos, sin = mrope_cos_sin(position_ids, self.cfg)
        if segment_bound is not None:
            # Padding (0) is not one bounded run in a packed row: as id -1 it is
            # still one segment, but the bound leaves it out (nothing reads it).
            segment_ids = jnp.where(segment_ids > 0, segment_ids, -1)
        static = dict(right_padded=right_padded, segment_bound=segment_bound)
        for layer in self.layers:
            x = maybe_remat(layer, self.remat, x, cos, sin, segment_ids, **static)
        return self.norm(x)

    def cached(self, x, position_ids, segment_ids, kv_cache: KVCache, prefill: bool = False):
        """Hidden states for tokens at `kv_cache.index` and the cache with them
        written; `prefill` promises the cache is empty (index 0)."""
        cos, sin = mrope_cos_sin(position_ids, self.cfg)
        kv_segments = kv_cache.write_segments(segment_ids)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer.cached(x, cos, sin, segment_ids, kv_cache, i, kv_segments, prefill)
            ks.append(k)
            vs.append(v)
        cache = KVCache(tuple(ks), tuple(vs), kv_segments, kv_cache.index + segment_ids.shape[1])
        return self.norm(x), cache
