"""A static-size KV cache for decoding: one (B, T, Hkv, D) K and V per layer.

Rows are left padded, so every row writes its next token at the same slot
`index`; `segments` marks each slot (1 = a real token, 0 = padding or empty)
and keeps padding out of attention.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tempura_jax.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # per layer (B, T, Hkv, D)
    v: tuple[jax.Array, ...]
    segments: jax.Array  # (B, T) int32
    index: jax.Array  # () int32: the next slot to write

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
        t = cfg.text
        shape = (batch, size, t.num_key_value_heads, t.head_dim)
        dtype = dtype or cfg.compute_dtype
        layers = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers))
        return cls(
            k=layers,
            v=layers,
            segments=jnp.zeros((batch, size), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def size(self) -> int:
        return self.segments.shape[1]

    def write_segments(self, segments: jax.Array) -> jax.Array:
        """The slots' ids once `segments` (B, S) are written at `index`."""
        ids = (segments != 0).astype(jnp.int32)
        return jax.lax.dynamic_update_slice_in_dim(self.segments, ids, self.index, axis=1)
