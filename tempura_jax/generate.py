"""Generation: one prefill over the (left-padded) prompt, then a jitted decode
loop against a static-size KV cache.

The vision tower runs once, inside the prefill. Decoded tokens continue the
M-RoPE ids at `cache slot + rope delta` (all three axes equal), which is what
`rope_index` gives text after the last image. Sampling is greedy
(temperature 0) or temperature + top-p from a seed; a row stops at its first
stop id and then emits `pad_id`.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tempura_jax.model.inputs import ModelInputs
from tempura_jax.model.kv_cache import KVCache
from tempura_jax.positions import rope_deltas


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    # Never emitted (vision placeholders and markers, say); applied after the
    # raw logits are recorded.
    suppress_ids: tuple[int, ...] = ()


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray  # (B, max_new_tokens); pad_id after a row's stop
    lengths: np.ndarray  # (B,) tokens up to and including the stop id
    logits: np.ndarray | None = None  # (B, max_new_tokens, V) raw logits of each step

    def rows(self) -> list[list[int]]:
        return [t[:n].tolist() for t, n in zip(self.tokens, self.lengths, strict=True)]


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """(B, V) float32 logits -> (B,) int32."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always the top token).
        before = jnp.cumsum(probs, axis=-1) - probs
        sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
        inverse = jnp.argsort(order, axis=-1)
        logits = jnp.take_along_axis(sorted_logits, inverse, axis=-1)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_left_padded(segment_ids: np.ndarray) -> None:
    seg = np.asarray(segment_ids) != 0
    if not seg[:, -1].all():
        raise ValueError("generation needs left-padded rows: each row's last token must be real")
    if (np.diff(seg.astype(np.int8), axis=1) < 0).any():
        raise ValueError("generation needs left-padded rows: padding only before the prompt")


def generate(
    model, inputs: ModelInputs, sampling: SamplingConfig, *, return_logits: bool = False
) -> Generation:
    """Generate after each (left-padded) prompt row of `inputs` (`prepare_inputs`)."""
    _check_left_padded(inputs.segment_ids)
    deltas = rope_deltas(np.asarray(inputs.position_ids), np.asarray(inputs.segment_ids))
    graphdef, state = nnx.split(model)
    tokens, lengths, logits = _generate(
        graphdef, state, jax.tree.map(jnp.asarray, inputs), jnp.asarray(deltas[:, 0]),
        sampling, return_logits,
    )  # fmt: skip
    return Generation(
        tokens=np.asarray(tokens),
        lengths=np.asarray(lengths),
        logits=np.asarray(logits) if return_logits else None,
    )


@partial(jax.jit, static_argnums=(0, 4, 5))
def _generate(graphdef, state, inputs: ModelInputs, deltas, sampling: SamplingConfig, keep: bool):
    model = nnx.merge(graphdef, state)
    cfg = model.config
    b, s = inputs.input_ids.shape
    steps = sampling.max_new_tokens
    cache = KVCache.zeros(cfg, b, s + steps)
    hidden, cache = model.model.cached(
        model.embed(inputs), inputs.position_ids, inputs.segment_ids, cache, prefill=True
    )
    logits = model.logits(hidden[:, -1:])[:, 0]
    vocab = logits.shape[-1]
    stop = jnp.asarray(sampling.stop_ids or (-1,), jnp.int32)
    suppress = jnp.zeros((vocab,), bool).at[jnp.asarray(sampling.suppress_ids, jnp.int32)].set(True)

    def cond(carry):
        step, _, _, done, *_ = carry
        return (step < steps) & ~done.all()

    def body(carry):
        step, logits, cache, done, tokens, lengths, history, key = carry
        key, sub = jax.random.split(key)
        if keep:
            history = history.at[:, step].set(logits)
        masked = jnp.where(suppress, -jnp.inf, logits)
        tok = sample_token(masked, sub, sampling.temperature, sampling.top_p)
        tok = jnp.where(done, sampling.pad_id, tok)
        tokens = tokens.at[:, step].set(tok)
        lengths = jnp.where(done, lengths, step + 1)
        done = done | jnp.isin(tok, stop)
        pos = jnp.broadcast_to((cache.index + deltas)[None, :, None], (3, b, 1))
        x = model.model.embed(tok[:, None], cfg.compute_dtype)
        hidden, cache = model.model.cached(x, pos, jnp.ones((b, 1), jnp.int32), cache)
        return step + 1, model.logits(hidden)[:, 0], cache, done, tokens, lengths, history, key

    carry = (
        jnp.zeros((), jnp.int32),
        logits,
        cache,
        jnp.zeros((b,), bool),
        jnp.full((b, steps), sampling.pad_id, jnp.int32),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b, steps, vocab) if keep else (0,), jnp.float32),
        jax.random.key(sampling.seed),
    )
    _, _, _, _, tokens, lengths, history, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, lengths, history
