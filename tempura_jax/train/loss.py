"""Next-token cross-entropy over assistant tokens, in chunks of tokens so the
(tokens x vocab) logits never exist at once (the fused-linear-CE idea).

Each chunk's logits are recomputed in the backward pass (`jax.checkpoint`), so
peak memory is one (chunk x vocab) fp32 block. The function returns the *sum*
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
    """Same value and gradient as `plain_loss_sum`, one (chunk, V) block at a time.
    hidden (N, H) any float dtype, head (H, V), targets (N,) int with IGNORE."""
    n, h = hidden.shape
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad), constant_values=IGNORE)
    hs = hidden.reshape(-1, chunk, h)
    ts = targets.reshape(-1, chunk)

    @jax.checkpoint
    def one(x, t):
        logits = jnp.einsum("nh,hv->nv", x, head, preferred_element_type=jnp.float32)
        return _nll_sum(logits, t)

    def body(carry, xs):
        s, c = one(*xs)
        return (carry[0] + s, carry[1] + c), None

    (total, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.int32(0)), (hs, ts))
    return total, count


def lm_loss_sum(hidden: jax.Array, head: jax.Array, labels: jax.Array, chunk: int | None = 1024):
    """(sum of token losses, token count) for (B, S, H) hidden states and (B, S)
    unshifted labels; `chunk=None` uses the plain full-logits path."""
    targets = shift_targets(labels).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if chunk is None:
        return plain_loss_sum(flat, head, targets)
    return chunked_loss_sum(flat, head, targets, chunk)
