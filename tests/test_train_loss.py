"""The chunked loss equals the plain loss, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    hidden, head, targets = data()
    ref, count = plain_loss_sum(hidden, head, targets)
    got, got_count = jax.jit(chunked_loss_sum, static_argnums=3)(hidden, head, targets, chunk)
    assert int(got_count) == int(count) == int((targets != IGNORE).sum())
    np.testing.assert_allclose(got, ref, rtol=1e-6)

    def mean(fn):
        return lambda x, w: fn(x, w, targets)[0] / count

    g_ref = jax.grad(mean(plain_loss_sum), argnums=(0, 1))(hidden, head)
    g = jax.grad(mean(lambda x, w, t: chunked_loss_sum(x, w, t, chunk)), argnums=(0, 1))(
        hidden, head
    )
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


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
