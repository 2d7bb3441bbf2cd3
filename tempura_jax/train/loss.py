"""Next-token cross-entropy over assistant tokens, in chunks of sequence
positions so the (tokens x vocab) logits never exist at once (the
fused-linear-CE idea).

Each chunk's logits are recomputed in the backward pass (`jax.checkpoint`), so
peak memory is one (local batch x chunk x vocab) fp32 block. The function returns the *sum*
of token losses and the token count: dividing by the count of the whole global
batch (all accumulation steps, all devices) gives the per-token mean the
reference optimises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100


def shift_targets(labels: jax.Array) -> jax.Array:
    """(B, S) labels -> (B, S) targets: position i predicts label i + 1."""
    pad = jnp.full((labels.shape[0], 1), IGNORE, labels.dtype)
    return jnp.concatenate([labels[:, 1:], pad], axis=1)


def plain_loss_sum(hidden: jax.Array, head: jax.Array, targets: jax.Array):
    """Reference: full fp32 logits. hidden (N, H), head (H, V), targets (N,)."""
    logits = jnp.einsum("nh,hv->nv", hidden, head, preferred_element_type=jnp.float32)
    return _nll_sum(logits, targets)


def _nll_sum(logits: jax.Array, targets: jax.Array):
    valid = targets != IGNORE
    safe = jnp.where(valid, targets, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(valid, lse - picked, 0.0)), jnp.sum(valid).astype(jnp.int32)


def chunked_loss_sum(hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int = 1024):
    """Same value and gradient as `plain_loss_sum`, one (B, chunk, V) block at a
    time. hidden (B, S, H) any float dtype, head (H, V), targets (B, S) int
    with IGNORE.

    The blocks run along the sequence, never across the batch, so a batch
    sharded over devices stays sharded: each device computes only its own
    rows' logits. The head is cast to the hidden dtype inside each block, so
    its gradient is summed over blocks in the head's own (fp32) dtype."""
    b, s, h = hidden.shape
    chunk = max(1, min(chunk, s))
    pad = (-s) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE)
    n = (s + pad) // chunk
    hs = hidden.reshape(b, n, chunk, h).swapaxes(0, 1)  # (n, B, chunk, H)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(x, t):
        w = head.astype(x.dtype)
        logits = jnp.einsum("bch,hv->bcv", x, w, preferred_element_type=jnp.float32)
        return _nll_sum(logits.reshape(-1, logits.shape[-1]), t.reshape(-1))

    def body(carry, xs):
        s, c = one(*xs)
        return (carry[0] + s, carry[1] + c), None

    (total, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.int32(0)), (hs, ts))
    return total, count


def lm_loss_sum(hidden: jax.Array, head: jax.Array, labels: jax.Array, chunk: int | None = 1024):
    """(sum of token losses, token count) for (B, S, H) hidden states and (B, S)
    unshifted labels; `chunk` sequence positions per logits block, `None` for
    the plain full-logits path."""
    targets = shift_targets(labels)
    if chunk is None:
        flat = hidden.reshape(-1, hidden.shape[-1])
        return plain_loss_sum(flat, head.astype(hidden.dtype), targets.reshape(-1))
    return chunked_loss_sum(hidden, head, targets, chunk)
