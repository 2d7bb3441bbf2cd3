"""GPU attention through cuDNN's fused flash kernel (`jax.nn.dot_product_attention`).

cuDNN masks are causal and/or per-row sequence lengths, so it covers the
decoder only when a row is one real segment followed by padding (the caller
states this as `right_padded`; the data pipeline guarantees it). Windows,
frames and packed rows go to the Pallas kernel instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128


def unsupported(q: jax.Array, k: jax.Array, has_segments: bool, right_padded: bool) -> str | None:
    """Why cuDNN cannot take this case (None when it can)."""
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (cuDNN flash takes bfloat16/float16)"
    d = q.shape[-1]
    if d % 8 or d > MAX_HEAD_DIM:
        return f"head_dim {d} (cuDNN flash takes multiples of 8 up to {MAX_HEAD_DIM})"
    if has_segments and not right_padded:
        return "segment ids other than right padding (windows, frames or packed rows)"
    if q.shape[1] != k.shape[1]:
        return "query and key lengths differ"
    if q.shape[1] % 2:
        # JAX rejects odd lengths for cuDNN's masked training kernels at trace
        # time; the data pipeline's buckets are even, a user's max_seq_len may not be.
        return f"odd sequence length {q.shape[1]}"
    return None


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    causal: bool,
    scale: float,
    implementation: str | None = "cudnn",
) -> jax.Array:
    """`segment_ids` must be right padded: the real tokens are the leading run
    sharing the first token's id. `implementation="xla"` runs the same call
    through XLA (how CPU tests check the length translation)."""
    lengths = None
    if segment_ids is not None:
        same = segment_ids == segment_ids[:, :1]
        lengths = jnp.argmin(same, axis=1).astype(jnp.int32)
        lengths = jnp.where(same.all(axis=1), segment_ids.shape[1], lengths)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
