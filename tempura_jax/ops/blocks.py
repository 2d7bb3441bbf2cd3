"""Padding and block-sparsity helpers shared by the attention kernels.

Segments in this model are contiguous runs (vision windows, frames, packed or
padded text), so the key blocks that a query block can see form one contiguous
range. `block_ranges` finds that range per block from each block's min/max
segment id; it is conservative (a block whose id range overlaps is visited and
masked element-wise), so it stays exact for arbitrary, non-contiguous ids and
only loses speed there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def pad_segments(segment_ids: jax.Array | None, batch: int, seq: int, size: int) -> jax.Array:
    """(B, size) int32 ids; the padded tail gets a fresh id (row max + 1), so it
    attends only to itself and stays a neighbour of the last real segment."""
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, seq), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    if size == seq:
        return segment_ids
    fresh = segment_ids.max(axis=1, keepdims=True) + 1
    tail = jnp.broadcast_to(fresh, (batch, size - seq))
    return jnp.concatenate([segment_ids, tail], axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockRanges:
    """Per query block, the key blocks [k_lo, k_hi) to visit; per key block,
    the query blocks [q_lo, q_hi) (for dK/dV). All (B, blocks) int32."""

    k_lo: jax.Array
    k_hi: jax.Array
    q_lo: jax.Array
    q_hi: jax.Array


def _first_last(hit: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = hit.shape[-1]
    any_hit = hit.any(-1)
    lo = jnp.argmax(hit, axis=-1)
    hi = n - jnp.argmax(hit[..., ::-1], axis=-1)
    zero = jnp.zeros_like(lo)
    return jnp.where(any_hit, lo, zero).astype(jnp.int32), jnp.where(any_hit, hi, zero).astype(
        jnp.int32
    )


def block_ranges(segment_ids: jax.Array, block_q: int, block_k: int, causal: bool) -> BlockRanges:
    """segment_ids: (B, S) with S a multiple of both block sizes (self-attention)."""
    b, s = segment_ids.shape
    qb = segment_ids.reshape(b, s // block_q, block_q)
    kb = segment_ids.reshape(b, s // block_k, block_k)
    qmin, qmax = qb.min(-1), qb.max(-1)
    kmin, kmax = kb.min(-1), kb.max(-1)
    hit = (kmax[:, None, :] >= qmin[:, :, None]) & (kmin[:, None, :] <= qmax[:, :, None])
    if causal:
        first_key = jnp.arange(s // block_k) * block_k
        last_query = jnp.arange(s // block_q) * block_q + block_q - 1
        hit &= first_key[None, None, :] <= last_query[None, :, None]
    k_lo, k_hi = _first_last(hit)
    q_lo, q_hi = _first_last(jnp.swapaxes(hit, 1, 2))
    return BlockRanges(k_lo, k_hi, q_lo, q_hi)


def visited_fraction(ranges: BlockRanges, num_k_blocks: int) -> jax.Array:
    """Share of (query block, key block) pairs the kernel computes (benchmarks)."""
    return (ranges.k_hi - ranges.k_lo).sum() / (ranges.k_lo.size * num_k_blocks)
