"""One attention entry point for the vision tower and the decoder.

Masks are expressed as segment ids (tokens attend only within their segment;
padding is a segment of its own) plus an optional causal constraint, which
covers windows, per-frame full attention, padding and packed sequences.
Implementations register by name; `xla` is the portable reference.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
_IMPLS: dict[str, AttentionFn] = {}


def register(name: str) -> Callable[[AttentionFn], AttentionFn]:
    def deco(fn: AttentionFn) -> AttentionFn:
        _IMPLS[name] = fn
        return fn

    return deco


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    impl: str = "xla",
) -> jax.Array:
    """q: (B, S, Hq, D); k, v: (B, S, Hkv, D) with Hq a multiple of Hkv (GQA);
    segment_ids: (B, S) int. Returns (B, S, Hq, D) in q's dtype."""
    try:
        fn = _IMPLS[impl]
    except KeyError:
        raise ValueError(f"unknown attention_impl {impl!r}; known: {sorted(_IMPLS)}") from None
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {k.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return fn(q, k, v, segment_ids=segment_ids, causal=causal, scale=scale)


def mask_from(segment_ids: jax.Array | None, causal: bool, sq: int, sk: int) -> jax.Array | None:
    """(B|1, 1, 1, Sq, Sk) boolean mask broadcastable over (B, Hkv, G, Sq, Sk)."""
    mask = None
    if segment_ids is not None:
        mask = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask = mask[:, None, None]
    if causal:
        tri = jnp.tril(jnp.ones((sq, sk), dtype=bool), k=sk - sq)[None, None, None]
        mask = tri if mask is None else mask & tri
    return mask


@register("xla")
def xla_attention(q, k, v, *, segment_ids, causal, scale):
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, sq, hkv, hq // hkv, d)
    # GQA without repeating K/V: group the query heads by their KV head.
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    mask = mask_from(segment_ids, causal, sq, k.shape[1])
    if mask is not None:
        # A finite floor keeps fully-masked rows (padding queries) NaN-free.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v)
    return out.reshape(b, sq, hq, d).astype(q.dtype)
