"""Exact block-local attention for contiguous segments of bounded length, in XLA.

When every segment is one contiguous run of at most `bound` positions, a query
at position i only ever sees keys in [i - (bound - 1), i + (bound - 1)]. Queries
are cut into blocks of `block` positions; each block takes the `2r + 1` key
blocks around it (r = ceil((bound - 1) / block)), which hold every key its
segments can reach, and masks them by segment ids as the dense reference does;
causal attention takes only the `r + 1` blocks up to its own (packed decoder
rows: a sample of at most `bound` tokens never sees the one before it).
The cost is O(N x span) instead of O(N^2), with span = (2r + 1) x block, and
the result equals the dense one up to the order of the softmax sums. Forward
and backward are plain JAX (autodiff), so XLA fuses and partitions them like
the dense reference, and its cost analysis counts every block (no loops).

When every segment also lies inside one aligned block of L positions (the
frames of a sample in TEMPURA's per-frame mode: equal frames back to back), an
`Aligned(L)` bound makes the block the segment's own: blocks of L see only
themselves (r = 0), the exact per-segment cost.

The bound is a host-side promise, computed with `segment_bound` (or
`static_bound`, which also tries the aligned layout) from concrete ids (`None`
when some id is not one contiguous run). Negative ids are padding:
they are not bounded, and a padding row longer than the bound sees only the
padding keys near it (its output differs from the dense one; nothing reads it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Block-padding positions get this id: real ids (padding included) never equal it.
_OUTSIDE = np.iinfo(np.int32).min


@dataclasses.dataclass(frozen=True)
class Aligned:
    """A static bound whose segments each lie in one block [k L, (k + 1) L)."""

    length: int


Bound = int | Aligned  # an int: runs of at most that many positions, anywhere


def length(bound: Bound) -> int:
    return bound.length if isinstance(bound, Aligned) else bound


def describe(bound: Bound | None) -> int | str | None:
    """JSON-friendly: the int, "aligned L", or None."""
    return f"aligned {bound.length}" if isinstance(bound, Aligned) else bound


def round_bound(n: int) -> int:
    """The static bound for a longest segment of n: 64, or a multiple of 128.
    The compiled shapes depend only on (block, r), which these values fix, so
    rounding costs nothing and keeps the number of compiled programs small."""
    n = max(int(n), 1)
    return 64 if n <= 64 else -(-n // 128) * 128


def longest_segment(segment_ids: np.ndarray) -> int | None:
    """Length of the longest run of a non-negative id in (.., N) ids (0: none),
    or None when some id >= 0 is not one contiguous run in its row."""
    ids = np.asarray(segment_ids).reshape(-1, np.shape(segment_ids)[-1])
    longest = 0
    for row in ids:
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        values = row[starts]
        lengths = np.diff(np.r_[starts, row.size])
        real = values >= 0
        if len(np.unique(values[real])) != int(real.sum()):
            return None  # an id in two runs
        if real.any():
            longest = max(longest, int(lengths[real].max()))
    return longest


def segment_bound(segment_ids: np.ndarray) -> int | None:
    """The rounded bound for these ids, or None (non-contiguous ids, or none
    >= 0): then only the dense path is exact."""
    longest = longest_segment(segment_ids)
    return round_bound(longest) if longest else None


def _inside_blocks(segment_ids: np.ndarray, block: int) -> bool:
    """Whether no run of an id >= 0 crosses a multiple of `block`."""
    ids = np.asarray(segment_ids).reshape(-1, np.shape(segment_ids)[-1])
    pos = np.arange(ids.shape[1]) // block
    same = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    return not (same & (pos[1:] != pos[:-1])[None]).any()


def aligned_bound(segment_ids: np.ndarray) -> Aligned | None:
    """Aligned(L) when every run of an id >= 0 lies in one block [k L, (k+1) L)
    with L its longest run (equal segments back to back), else None."""
    longest = longest_segment(segment_ids)
    if not longest or not _inside_blocks(segment_ids, longest):
        return None
    return Aligned(longest)


def violation(segment_ids: np.ndarray, bound: Bound) -> str | None:
    """Why these ids break the promise of `bound` (None: they keep it)."""
    longest = longest_segment(segment_ids)
    if longest is None:
        return "non-contiguous ids"
    if longest > length(bound):
        return f"a run of {longest}"
    if isinstance(bound, Aligned) and not _inside_blocks(segment_ids, bound.length):
        return f"a run across a block of {bound.length}"
    return None


def static_bound(segment_ids: np.ndarray) -> Bound | None:
    """The cheapest exact bound for these ids where block-local attention pays
    at this length (aligned blocks, else a rounded band), else None: a bound
    that changes nothing stays out of the compiled shape."""
    n = np.shape(segment_ids)[-1]
    for bound in (aligned_bound(segment_ids), segment_bound(segment_ids)):
        if worthwhile(bound, n):
            return bound
    return None


def layout(bound: Bound) -> tuple[int, int]:
    """(query block, key blocks on each side)."""
    if isinstance(bound, Aligned):
        return bound.length, 0
    blk = 64 if bound <= 64 else 128
    return blk, -(-(bound - 1) // blk)


def span(bound: Bound, causal: bool = False) -> int:
    """Keys each query block visits (causal: none after its own block)."""
    blk, r = layout(bound)
    return ((1 if causal else 2) * r + 1) * blk


def worthwhile(bound: Bound | None, seq: int, causal: bool = False) -> bool:
    """Block-local pays when the span is shorter than the (block-padded) sequence."""
    if bound is None:
        return False
    blk, _ = layout(bound)
    return span(bound, causal) < -(-seq // blk) * blk


def _windows(x: jax.Array, r: int, blk: int, nb: int, fill, right: int) -> jax.Array:
    """(B, nb*blk, ...) -> (B, nb, (r+1+right)*blk, ...): each block's key span,
    from r blocks before it to `right` blocks after it."""
    widths = [(0, 0)] * x.ndim
    widths[1] = (r * blk, right * blk)
    x = jnp.pad(x, widths, constant_values=fill)
    x = x.reshape(x.shape[0], nb + r + right, blk, *x.shape[2:])
    return jnp.concatenate([x[:, o : o + nb] for o in range(r + 1 + right)], axis=2)


def block_local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    bound: Bound,
    causal: bool,
    scale: float,
) -> jax.Array:
    """q (B, N, Hq, D), k/v (B, N, Hkv, D), segment_ids (B, N) -> (B, N, Hq, D).
    Exact when every non-negative id is one run of at most `bound` positions
    (and, for `Aligned`, inside one aligned block)."""
    b, n, hq, d = q.shape
    hkv = k.shape[2]
    blk, r = layout(bound)
    nb = -(-n // blk)
    extra = nb * blk - n

    def pad(x, fill=0):
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, extra)
        return jnp.pad(x, widths, constant_values=fill)

    seg = pad(segment_ids.astype(jnp.int32), _OUTSIDE)
    qb = pad(q).reshape(b, nb, blk, hkv, hq // hkv, d)
    right = 0 if causal else r  # causal: later key blocks are all masked
    kw = _windows(pad(k), r, blk, nb, 0, right)  # (B, nb, S, Hkv, D)
    vw = _windows(pad(v), r, blk, nb, 0, right)
    sw = _windows(seg, r, blk, nb, _OUTSIDE, right)  # (B, nb, S)
    logits = jnp.einsum("bnqhgd,bnkhd->bnhgqk", qb, kw, preferred_element_type=jnp.float32)
    logits = logits * scale
    mask = seg.reshape(b, nb, 1, 1, blk, 1) == sw[:, :, None, None, None, :]
    if causal:
        rows = np.arange(blk)[:, None]
        cols = np.arange(sw.shape[-1])[None, :] - r * blk
        mask = mask & jnp.asarray(cols <= rows)
    # Every row sees at least itself, so no row is fully masked.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnhgqk,bnkhd->bnqhgd", probs, vw)
    return out.reshape(b, nb * blk, hq, d)[:, :n].astype(q.dtype)
