"""The chunked loss equals the plain loss, in value and gradient, and keeps a
batch-sharded input sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tempura_jax.train.loss import IGNORE, chunked_loss_sum, lm_loss_sum, plain_loss_sum


def data(n=37, h=16, v=300, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k[0], (n, h), jnp.float32)
    head = jax.random.normal(k[1], (h, v), jnp.float32) * 0.5
    targets = jax.random.randint(k[2], (n,), 0, v)
    targets = targets.at[::3].set(IGNORE)  # only some tokens carry a label
    return hidden, head, targets


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_chunked_equals_plain(chunk):
    """(3, 37) tokens: chunks that divide the sequence, pad it, or exceed it."""
    hidden, head, targets = data(n=3 * 37)
    ref, count = plain_loss_sum(hidden, head, targets)
    seq = (hidden.reshape(3, 37, -1), targets.reshape(3, 37))
    got, got_count = jax.jit(chunked_loss_sum, static_argnums=3)(seq[0], head, seq[1], chunk)
    assert int(got_count) == int(count) == int((targets != IGNORE).sum())
    np.testing.assert_allclose(got, ref, rtol=1e-6)

    def plain_mean(x, w):
        return plain_loss_sum(x, w, targets)[0] / count

    def chunked_mean(x, w):
        return chunked_loss_sum(x.reshape(3, 37, -1), w, seq[1], chunk)[0] / count

    g_ref = jax.grad(plain_mean, argnums=(0, 1))(hidden, head)
    g = jax.grad(chunked_mean, argnums=(0, 1))(hidden, head)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _scan_carries(jaxpr, shape) -> list[str]:
    """dtypes of every scan output of `shape`, at any depth of the jaxpr."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found += [str(v.aval.dtype) for v in eqn.outvars if v.aval.shape == shape]
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                found += _scan_carries(getattr(inner, "jaxpr", inner), shape)
    return found


def test_bf16_hidden_sums_the_head_gradient_in_fp32():
    """bf16 blocks, but the head's gradient is carried over the blocks in fp32
    (a head cast before the scan would carry, and round, it in bf16)."""
    hidden, head, targets = data(n=4 * 32)
    x, t = hidden.reshape(4, 32, -1).astype(jnp.bfloat16), targets.reshape(4, 32)
    grad = jax.grad(lambda w: chunked_loss_sum(x, w, t, 4)[0])
    assert _scan_carries(jax.make_jaxpr(grad)(head).jaxpr, head.shape) == ["float32"]
    g = grad(head)
    flat_x, flat_t = x.reshape(128, -1), t.reshape(-1)
    g_ref = jax.grad(lambda w: plain_loss_sum(flat_x, w.astype(x.dtype), flat_t)[0])
    ref = np.asarray(g_ref(head), np.float32)
    np.testing.assert_allclose(g, ref, rtol=0.05, atol=0.05 * np.abs(ref).max())


def test_batch_sharded_loss_does_not_gather_the_batch():
    """With the batch sharded over 8 devices, each device computes only its own
    rows' logits: the compiled loss and gradient move no hidden states between
    devices (only the scalar sums are all-reduced)."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    hidden, head, targets = data(n=8 * 24, h=16, v=300)
    x, t = hidden.reshape(8, 24, -1), targets.reshape(8, 24)
    rows = NamedSharding(mesh, PartitionSpec("data"))
    x, t = jax.device_put(x, rows), jax.device_put(t, rows)
    w = jax.device_put(head, NamedSharding(mesh, PartitionSpec()))

    def loss_and_grads(x, w):
        return jax.value_and_grad(lambda x, w: chunked_loss_sum(x, w, t, 8)[0], argnums=(0, 1))(
            x, w
        )

    hlo = jax.jit(loss_and_grads).lower(x, w).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    (value, (gx, gw)) = jax.jit(loss_and_grads)(x, w)
    ref = plain_loss_sum(hidden, head, targets)[0]
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    assert gx.sharding.spec == PartitionSpec("data")


def test_shifted_labels_and_nothing_to_learn():
    hidden, head, _ = data(n=12)
    labels = jnp.full((2, 6), IGNORE).at[0, 3].set(7).at[1, 5].set(9)
    total, count = lm_loss_sum(hidden.reshape(2, 6, -1), head, labels, chunk=4)
    logits = np.asarray(hidden @ head, np.float64).reshape(2, 6, -1)
    # Label 7 at (0, 3) is predicted from position (0, 2); (1, 5) from (1, 4).
    expect = 0.0
    for b, i, t in ((0, 2, 7), (1, 4, 9)):
        row = logits[b, i]
        expect += np.log(np.exp(row - row.max()).sum()) + row.max() - row[t]
    assert int(count) == 2
    np.testing.assert_allclose(total, expect, rtol=1e-5)
    none = jnp.full((2, 6), IGNORE)
    total, count = lm_loss_sum(hidden.reshape(2, 6, -1), head, none, chunk=4)
    assert int(count) == 0 and float(total) == 0.0
