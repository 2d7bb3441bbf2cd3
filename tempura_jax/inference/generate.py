"""Generation: one prefill over the (left-padded) prompt, then a jitted decode
loop against a static-size KV cache.

The vision tower runs once, inside the prefill. Decoded tokens continue the
M-RoPE ids at `cache slot + rope delta` (all three axes equal), which is what
`rope_index` gives text after the last image. `generate_chunks` runs the same
loop a chunk of steps per call, for streaming. Sampling is greedy
(temperature 0) or temperature + top-p from a seed; a row stops at its first
stop id and then emits `pad_id`. Seed, temperature and top_p are traced, so a
new value does not recompile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

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
    done: np.ndarray | None = None  # (B,) rows that stopped at a stop id (generate_chunks)

    def rows(self) -> list[list[int]]:
        return [t[:n].tolist() for t, n in zip(self.tokens, self.lengths, strict=True)]


def _nucleus(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Logits outside the smallest prefix whose mass reaches top_p (always the top token)
    set to -inf."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
    return jnp.take_along_axis(sorted_logits, jnp.argsort(order, axis=-1), axis=-1)


def sample_token(
    logits: jax.Array, key: jax.Array, temperature: float | jax.Array, top_p: float | jax.Array
) -> jax.Array:
    """(B, V) float32 logits -> (B,) int32. A Python 0 temperature is greedy (no key
    needed); otherwise temperature and top_p may be traced, so new values reuse the
    compiled program, and the top-p sort runs only when top_p < 1."""
    if isinstance(temperature, int | float) and temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    top_p = jnp.asarray(top_p, logits.dtype)
    logits = jax.lax.cond(top_p < 1.0, _nucleus, lambda x, _: x, logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_left_padded(segment_ids: np.ndarray) -> None:
    seg = np.asarray(segment_ids) != 0
    if not seg[:, -1].all():
        raise ValueError("generation needs left-padded rows: each row's last token must be real")
    if (np.diff(seg.astype(np.int8), axis=1) < 0).any():
        raise ValueError("generation needs left-padded rows: padding only before the prompt")


@dataclasses.dataclass(frozen=True)
class _Static:
    """What of a SamplingConfig fixes shapes or control flow: a change recompiles.
    Seed, temperature and top_p go in as arrays instead."""

    max_new_tokens: int
    greedy: bool
    stop_ids: tuple[int, ...]
    pad_id: int
    suppress_ids: tuple[int, ...]


def _setup(model, inputs: ModelInputs, sampling: SamplingConfig):
    """(graphdef, state, device inputs, rope deltas, knobs, static) for the programs."""
    _check_left_padded(inputs.segment_ids)
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
    deltas = rope_deltas(np.asarray(inputs.position_ids), np.asarray(inputs.segment_ids))
    graphdef, state = nnx.split(model)
    static = _Static(
        sampling.max_new_tokens,
        sampling.temperature == 0.0,
        tuple(sampling.stop_ids),
        sampling.pad_id,
        tuple(sampling.suppress_ids),
    )
    knobs = (
        jax.random.key(sampling.seed),
        jnp.float32(sampling.temperature),
        jnp.float32(sampling.top_p),
    )
    device_inputs = jax.tree.map(jnp.asarray, inputs)
    return graphdef, state, device_inputs, jnp.asarray(deltas[:, 0]), knobs, static


def generate(
    model, inputs: ModelInputs, sampling: SamplingConfig, *, return_logits: bool = False
) -> Generation:
    """Generate after each (left-padded) prompt row of `inputs` (`prepare_inputs`)."""
    graphdef, state, inputs, deltas, knobs, static = _setup(model, inputs, sampling)
    tokens, lengths, logits = _generate(
        graphdef, state, inputs, deltas, knobs, static, return_logits
    )
    return Generation(
        tokens=np.asarray(tokens),
        lengths=np.asarray(lengths),
        logits=np.asarray(logits) if return_logits else None,
    )


def generate_chunks(
    model,
    inputs: ModelInputs,
    sampling: SamplingConfig,
    chunk: int,
    *,
    return_logits: bool = False,
) -> Iterator[Generation]:
    """`generate` a chunk at a time, for streaming: the prefill program picks
    the first token, then one compiled decode program runs `chunk` steps per
    call (the same loop as `generate`, so the tokens are the same). Yields the
    Generation so far after the prefill and after each chunk (its `done` says
    which rows stopped); ends once every row stopped or max_new_tokens are
    out. Closing the iterator early stops decoding."""
    if chunk < 1:
        raise ValueError(f"the decode chunk must be at least 1 token, got {chunk}")
    graphdef, state, inputs, deltas, knobs, static = _setup(model, inputs, sampling)
    carry = _prefill(graphdef, state, inputs, knobs, static, return_logits)
    step = 1
    while True:
        # Copies: the carry's buffers are donated to the next chunk.
        tokens, lengths, done = (np.array(x) for x in (carry.tokens, carry.lengths, carry.done))
        logits = np.array(carry.history) if return_logits else None
        yield Generation(tokens, lengths, logits, done)
        if step >= static.max_new_tokens or done.all():
            return
        step = min(step + chunk, static.max_new_tokens)
        carry = _chunk(graphdef, state, carry, deltas, knobs, static, return_logits, step)


class _Carry(NamedTuple):
    """The decode loop's state between steps (and between chunks)."""

    step: jax.Array  # () the next token index
    tok: jax.Array  # (B,) the last picked token
    cache: KVCache
    done: jax.Array  # (B,) stopped at a stop id
    tokens: jax.Array  # (B, max_new_tokens)
    lengths: jax.Array  # (B,)
    history: jax.Array  # (B, max_new_tokens, V) raw logits, or (0,) when not kept
    key: jax.Array


def _start(model, inputs: ModelInputs, knobs, static: _Static, keep: bool) -> _Carry:
    """The prefill over the prompt and the pick of the first token."""
    b, s = inputs.input_ids.shape
    steps = static.max_new_tokens
    cache = KVCache.zeros(model.config, b, s + steps)
    hidden, cache = model.model.cached(
        model.embed(inputs), inputs.position_ids, inputs.segment_ids, cache, prefill=True
    )
    logits = model.logits(hidden[:, -1:])[:, 0]
    vocab = logits.shape[-1]
    carry = _Carry(
        jnp.zeros((), jnp.int32),
        jnp.zeros((b,), jnp.int32),
        cache,
        jnp.zeros((b,), bool),
        jnp.full((b, steps), static.pad_id, jnp.int32),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b, steps, vocab) if keep else (0,), jnp.float32),
        knobs[0],
    )
    return _pick(carry, logits, knobs, static, keep)


def _pick(carry: _Carry, logits: jax.Array, knobs, static: _Static, keep: bool) -> _Carry:
    """Record `logits`, choose token `step` from them, update the row state."""
    _, temperature, top_p = knobs
    temperature = 0.0 if static.greedy else temperature
    step, done = carry.step, carry.done
    suppress = jnp.zeros(logits.shape[-1:], bool)
    suppress = suppress.at[jnp.asarray(static.suppress_ids, jnp.int32)].set(True)
    stop = jnp.asarray(static.stop_ids or (-1,), jnp.int32)
    key, sub = jax.random.split(carry.key)
    history = carry.history.at[:, step].set(logits) if keep else carry.history
    tok = sample_token(jnp.where(suppress, -jnp.inf, logits), sub, temperature, top_p)
    tok = jnp.where(done, static.pad_id, tok)
    return _Carry(
        step + 1,
        tok,
        carry.cache,
        done | jnp.isin(tok, stop),
        carry.tokens.at[:, step].set(tok),
        jnp.where(done, carry.lengths, step + 1),
        history,
        key,
    )


def _decode(model, carry: _Carry, deltas, knobs, static: _Static, keep: bool, until) -> _Carry:
    """Steps of (forward the last token, pick the next) until token `until`
    (traced: every chunk length is one program) or every row has stopped."""
    cfg = model.config
    b = carry.tok.shape[0]

    def cond(c: _Carry):
        return (c.step < until) & ~c.done.all()

    def body(c: _Carry) -> _Carry:
        pos = jnp.broadcast_to((c.cache.index + deltas)[None, :, None], (3, b, 1))
        x = model.model.embed(c.tok[:, None], cfg.compute_dtype)
        hidden, cache = model.model.cached(x, pos, jnp.ones((b, 1), jnp.int32), c.cache)
        return _pick(c._replace(cache=cache), model.logits(hidden)[:, 0], knobs, static, keep)

    return jax.lax.while_loop(cond, body, carry)


@partial(jax.jit, static_argnums=(0, 5, 6))
def _generate(
    graphdef,
    state,
    inputs: ModelInputs,
    deltas: jax.Array,
    knobs: tuple[jax.Array, jax.Array, jax.Array],
    static: _Static,
    keep: bool,
):
    """Prefill, pick the first token, then max_new_tokens - 1 steps of (forward the
    last token, pick the next): no forward pass whose logits go unused."""
    model = nnx.merge(graphdef, state)
    carry = _start(model, inputs, knobs, static, keep)
    carry = _decode(model, carry, deltas, knobs, static, keep, static.max_new_tokens)
    return carry.tokens, carry.lengths, carry.history


@partial(jax.jit, static_argnums=(0, 4, 5))
def _prefill(graphdef, state, inputs: ModelInputs, knobs, static: _Static, keep: bool) -> _Carry:
    return _start(nnx.merge(graphdef, state), inputs, knobs, static, keep)


@partial(jax.jit, static_argnums=(0, 5, 6), donate_argnums=(2,))
def _chunk(graphdef, state, carry: _Carry, deltas, knobs, static: _Static, keep: bool, until):
    return _decode(nnx.merge(graphdef, state), carry, deltas, knobs, static, keep, until)
