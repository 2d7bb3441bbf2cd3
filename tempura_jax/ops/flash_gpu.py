"""Flash attention for GPUs in Pallas (Triton lowering), forward and backward.

Differences from a plain flash kernel, all for this model's masks:
* segment ids are applied element-wise, and each query block only loops over
  the key blocks whose segments it can reach (`blocks.block_ranges`), so
  vision windows and per-frame blocks cost O(N * window) instead of O(N^2);
* GQA reads the shared K/V head through the index map (no repeated K/V);
* head_dim is padded to a power of two (Triton tiles), the sequence to the
  block size; both are sliced off again.
Softmax runs in base 2 with the scale folded into the logits; the forward pass
saves the base-2 log-sum-exp for the backward kernels.
On CPU the same kernels run in Pallas interpret mode (tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from tempura_jax.ops.blocks import BlockRanges, block_ranges, pad_axis, pad_segments, round_up

MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    block_q: int = 64
    block_k: int = 64
    block_q_bwd: int = 64
    block_k_bwd: int = 64
    num_warps: int = 4
    num_stages: int = 2
    interpret: bool = False

    def compiler_params(self):
        if self.interpret:
            return None
        return pl_triton.CompilerParams(num_warps=self.num_warps, num_stages=self.num_stages)


def _dot(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """float32 in float32 (IEEE): Triton's default for float32 is TF32, which
    would silently give less than the caller's dtype; 16-bit inputs are unchanged."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return pl_triton.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def _mask(seg_q, seg_k, q0, k0, causal):
    mask = seg_q[:, None] == seg_k[None, :]
    if causal:
        rows = q0 + jnp.arange(seg_q.shape[0])
        cols = k0 + jnp.arange(seg_k.shape[0])
        mask &= rows[:, None] >= cols[None, :]
    return mask


def _fwd_kernel(
    k_lo_ref, k_hi_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
    *, scale, causal, block_k,
):  # fmt: skip
    block_q, d = q_ref.shape
    q0 = pl.program_id(0) * block_q
    q = q_ref[...]
    seg_q = seg_q_ref[...]

    def body(j, carry):
        acc, m, denom = carry
        k0 = j * block_k
        keys = pl.ds(k0, block_k)
        s = _dot(q, k_ref[keys, :], trans_b=True) * scale
        s = jnp.where(_mask(seg_q, seg_k_ref[keys], q0, k0, causal), s, MASKED)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp2(s - m_new[:, None])
        alpha = jnp.exp2(m - m_new)
        acc = acc * alpha[:, None] + _dot(p.astype(v_ref.dtype), v_ref[keys, :])
        return acc, m_new, denom * alpha + p.sum(axis=-1)

    init = (
        jnp.zeros((block_q, d), jnp.float32),
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    acc, m, denom = jax.lax.fori_loop(k_lo_ref[()], k_hi_ref[()], body, init)
    # Every query sees at least its own key, so denom > 0.
    o_ref[...] = (acc / denom[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(denom)


def _dq_kernel(
    k_lo_ref, k_hi_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
    dq_ref, *, scale, causal, block_k,
):  # fmt: skip
    block_q, d = q_ref.shape
    q0 = pl.program_id(0) * block_q
    q, do = q_ref[...], do_ref[...]
    seg_q, lse, delta = seg_q_ref[...], lse_ref[...], delta_ref[...]

    def body(j, dq):
        k0 = j * block_k
        keys = pl.ds(k0, block_k)
        k, v = k_ref[keys, :], v_ref[keys, :]
        s = _dot(q, k, trans_b=True) * scale
        mask = _mask(seg_q, seg_k_ref[keys], q0, k0, causal)
        p = jnp.where(mask, jnp.exp2(s - lse[:, None]), 0.0)
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(k_lo_ref[()], k_hi_ref[()], body, jnp.zeros((block_q, d), jnp.float32))
    dq_ref[...] = (dq * (scale / LOG2E)).astype(dq_ref.dtype)


def _dkv_kernel(
    q_lo_ref, q_hi_ref, seg_q_ref, seg_k_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
    dk_ref, dv_ref, *, scale, causal, block_q,
):  # fmt: skip
    block_k, d = k_ref.shape
    k0 = pl.program_id(0) * block_k
    k, v, seg_k = k_ref[...], v_ref[...], seg_k_ref[...]

    def body(i, carry):
        dk, dv = carry
        q0 = i * block_q
        rows = pl.ds(q0, block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        s = _dot(q, k, trans_b=True) * scale
        mask = _mask(seg_q_ref[rows], seg_k, q0, k0, causal)
        p = jnp.where(mask, jnp.exp2(s - lse_ref[rows][:, None]), 0.0)
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        ds = p * (_dot(do, v, trans_b=True) - delta_ref[rows][:, None])
        return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

    zeros = jnp.zeros((block_k, d), jnp.float32)
    dk, dv = jax.lax.fori_loop(q_lo_ref[()], q_hi_ref[()], body, (zeros, zeros))
    dk_ref[...] = (dk * (scale / LOG2E)).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _row_block(block: int):
    """(None, block, None, D) tiles of a (B, S, H, D) array, grid (blocks, B, H)."""
    return lambda d: pl.BlockSpec((None, block, None, d), lambda i, b, h: (b, i, h, 0))


def _kv_rows(seq: int, group: int):
    """The whole K/V sequence of the query head's KV head (GQA via the index map)."""
    return lambda d: pl.BlockSpec((None, seq, None, d), lambda i, b, h: (b, 0, h // group, 0))


def _kv_block(block: int, group: int):
    """One K/V block of the query head's KV head (dK/dV grid over key blocks)."""
    return lambda d: pl.BlockSpec((None, block, None, d), lambda i, b, h: (b, i, h // group, 0))


def _scalar():
    return pl.BlockSpec((None, None), lambda i, b, h: (b, i))


def _vec(block: int):
    return pl.BlockSpec((None, block), lambda i, b, h: (b, i))


def _lse_spec(block: int):
    return pl.BlockSpec((None, None, block), lambda i, b, h: (b, h, i))


def _forward(q, k, v, seg, ranges: BlockRanges, causal, scale, cfg: FlashConfig):
    b, s, hq, d = q.shape
    group = hq // k.shape[2]
    kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, block_k=cfg.block_k)
    return pl.pallas_call(
        kernel,
        grid=(s // cfg.block_q, b, hq),
        in_specs=[
            _scalar(),
            _scalar(),
            _vec(cfg.block_q),
            pl.BlockSpec((None, s), lambda i, b, h: (b, 0)),
            _row_block(cfg.block_q)(d),
            _kv_rows(s, group)(d),
            _kv_rows(s, group)(d),
        ],
        out_specs=[_row_block(cfg.block_q)(d), _lse_spec(cfg.block_q)],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, hq, s), jnp.float32),
        ],
        compiler_params=cfg.compiler_params(),
        interpret=cfg.interpret,
        name="tempura_flash_fwd",
    )(ranges.k_lo, ranges.k_hi, seg, seg, q, k, v)


def _backward(q, k, v, seg, ranges: BlockRanges, o, lse, do, causal, scale, cfg: FlashConfig):
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    group = hq // hkv
    delta = jnp.einsum("bshd,bshd->bhs", o.astype(jnp.float32), do.astype(jnp.float32))
    full_seq = pl.BlockSpec((None, s), lambda i, b, h: (b, 0))
    whole = lambda d: pl.BlockSpec((None, s, None, d), lambda i, b, h: (b, 0, h, 0))  # noqa: E731
    whole_lse = pl.BlockSpec((None, None, s), lambda i, b, h: (b, h, 0))
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, causal=causal, block_k=bk),
        grid=(s // bq, b, hq),
        in_specs=[
            _scalar(),
            _scalar(),
            _vec(bq),
            full_seq,
            _row_block(bq)(d),
            _kv_rows(s, group)(d),
            _kv_rows(s, group)(d),
            _row_block(bq)(d),
            _lse_spec(bq),
            _lse_spec(bq),
        ],
        out_specs=_row_block(bq)(d),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=cfg.compiler_params(),
        interpret=cfg.interpret,
        name="tempura_flash_dq",
    )(ranges.k_lo, ranges.k_hi, seg, seg, q, k, v, do, lse, delta)
    # dK/dV per query head (float32), summed over each GQA group below.
    per_head = jax.ShapeDtypeStruct((b, s, hq, d), jnp.float32)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, causal=causal, block_q=bq),
        grid=(s // bk, b, hq),
        in_specs=[
            _scalar(),
            _scalar(),
            full_seq,
            _vec(bk),
            whole(d),
            _kv_block(bk, group)(d),
            _kv_block(bk, group)(d),
            whole(d),
            whole_lse,
            whole_lse,
        ],
        out_specs=[_row_block(bk)(d), _row_block(bk)(d)],
        out_shape=[per_head, per_head],
        compiler_params=cfg.compiler_params(),
        interpret=cfg.interpret,
        name="tempura_flash_dkv",
    )(ranges.q_lo, ranges.q_hi, seg, seg, q, k, v, do, lse, delta)
    fold = lambda x, like: x.reshape(b, s, hkv, group, d).sum(3).astype(like.dtype)  # noqa: E731
    return dq, fold(dk, k), fold(dv, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, seg, causal, scale, cfg):
    ranges = block_ranges(seg, cfg.block_q, cfg.block_k, causal)
    return _forward(q, k, v, seg, ranges, causal, scale, cfg)[0]


def _flash_fwd(q, k, v, seg, causal, scale, cfg):
    ranges = block_ranges(seg, cfg.block_q, cfg.block_k, causal)
    o, lse = _forward(q, k, v, seg, ranges, causal, scale, cfg)
    return o, (q, k, v, seg, o, lse)


def _flash_bwd(causal, scale, cfg, res, do):
    q, k, v, seg, o, lse = res
    ranges = block_ranges(seg, cfg.block_q_bwd, cfg.block_k_bwd, causal)
    dq, dk, dv = _backward(q, k, v, seg, ranges, o, lse, do, causal, scale, cfg)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    causal: bool,
    scale: float,
    config: FlashConfig = FlashConfig(),
) -> jax.Array:
    """q (B, S, Hq, D), k/v (B, S, Hkv, D), segment_ids (B, S) or None -> (B, S, Hq, D)."""
    b, s, _, d = q.shape
    block = math.lcm(config.block_q, config.block_k, config.block_q_bwd, config.block_k_bwd)
    s_pad, d_pad = round_up(s, block), max(16, pl.next_power_of_2(d))
    q, k, v = (pad_axis(pad_axis(x, 1, s_pad), 3, d_pad) for x in (q, k, v))
    seg = pad_segments(segment_ids, b, s, s_pad)
    out = _flash(q, k, v, seg, causal, scale * LOG2E, config)
    return out[:, :s, :, :d]
