"""TPU attention: Pallas splash attention with segment ids and a static causal mask.

With a segment-length bound L (contiguous segments of at most L positions) the
static mask is the band |i - j| < L (`LocalMask`, cut to j <= i when causal):
every key a segment can reach lies in it, so it stays exact with the segment
ids, and splash skips the blocks outside it.

Splash takes (heads, seq, head_dim) per example, so the batch is vmapped; GQA
is native (query heads grouped over the K/V heads). The kernel needs the
sequence padded to its block size and head_dim to the 128-lane width; the
scale is folded into q. Off TPU the same kernel runs in interpret mode.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from tempura_jax.ops.blocks import pad_axis, pad_segments, round_up

LANES = 128


@dataclasses.dataclass(frozen=True)
class SplashConfig:
    block: int = 512  # upper bound; shrunk (in multiples of 128) for short sequences
    interpret: bool = False

    def block_for(self, seq: int) -> int:
        return min(self.block, round_up(seq, LANES))


def _static_mask(seq: int, causal: bool, band: int | None) -> masks.Mask:
    if band is not None:
        return masks.LocalMask((seq, seq), (band - 1, 0 if causal else band - 1), offset=0)
    return (masks.CausalMask if causal else masks.FullMask)((seq, seq))


def _kernel(seq: int, heads: int, causal: bool, block: int, interpret: bool, band=None):
    mask = masks.MultiHeadMask([_static_mask(seq, causal, band) for _ in range(heads)])
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    # Built inside the caller's trace: the mask tables (NumPy, cached by splash
    # per mask and block shape) become constants of the program being traced,
    # so no device is needed and an ahead-of-time compile for a TPU works.
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    causal: bool,
    scale: float,
    config: SplashConfig = SplashConfig(),
    band: int | None = None,
) -> jax.Array:
    """q (B, S, Hq, D), k/v (B, S, Hkv, D), segment_ids (B, S) or None -> (B, S, Hq, D);
    `band`: a segment-length bound (see the module docstring)."""
    b, s, hq, d = q.shape
    block = config.block_for(s)
    s_pad, d_pad = round_up(s, block), round_up(d, LANES)

    def heads_major(x):
        return jnp.swapaxes(pad_axis(pad_axis(x, 1, s_pad), 3, d_pad), 1, 2)

    seg = pad_segments(segment_ids, b, s, s_pad)
    kernel = _kernel(s_pad, hq, causal, block, config.interpret, band)

    def one(q, k, v, seg):
        return kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))

    q = (q * scale).astype(q.dtype)
    out = jax.vmap(one)(heads_major(q), heads_major(k), heads_major(v), seg)
    return jnp.swapaxes(out, 1, 2)[:, :s, :, :d]
