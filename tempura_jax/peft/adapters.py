"""Low-rank adapters on the model's Dense layers: LoRA, DoRA, and QLoRA's
quantised base (tempura_jax.peft.quant).

A Dense with kernel W (in..., out...) gets A (in..., r) and B (r, out...),
both `nnx.LoRAParam`; B starts at zero so the adapted model starts equal to
the base. LoRA: y = x W + (alpha / r) x A B. DoRA (as PEFT computes it):
with W' = W + (alpha / r) A B and n = ||W'|| over the input axes (detached),
y = (m / n) (x W + (alpha / r) x A B), m initialised to ||W||.

Dropout acts on the adapter's input only inside `training_dropout` (the
training step's loss); everywhere else (evaluation, generation, export) it is
off by construction.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tempura_jax.model.layers import Dense
from tempura_jax.params import param_table
from tempura_jax.peft import quant
from tempura_jax.peft.config import ADAPTABLE, PeftConfig, select

# The traced seed of the training step being built; None: no dropout.
_SEED: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("seed", default=None)


def _contract(x: jax.Array, w: jax.Array, n: int) -> jax.Array:
    """Contract the trailing `n` dims of x with the leading `n` dims of w."""
    dims = (tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
    return jax.lax.dot_general(x, w, (dims, ((), ())))


class Adapter(nnx.Module):
    def __init__(self, dense: Dense, cfg: PeftConfig, key: jax.Array, index: int = 0):
        kernel = dense.kernel[...]
        n_in, dtype = dense.n_in, kernel.dtype
        axes = dense.kernel.get_metadata().get("axes") or (None,) * kernel.ndim
        in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
        fan_in = int(np.prod(in_shape))
        bound = 1.0 / np.sqrt(fan_in)  # PEFT's kaiming_uniform(a=sqrt(5)) for A
        a = jax.random.uniform(key, (*in_shape, cfg.rank), jnp.float32, -bound, bound)
        self.n_in = n_in
        self.scale = float(cfg.alpha) / cfg.rank
        self.rate = float(cfg.dropout)
        self.index = index  # distinct dropout masks per adapter
        self.lora_a = nnx.LoRAParam(a.astype(dtype), axes=(*axes[:n_in], None))
        self.lora_b = nnx.LoRAParam(
            jnp.zeros((cfg.rank, *out_shape), dtype), axes=(None, *axes[n_in:])
        )
        self.magnitude = nnx.data(None)
        if cfg.dora:
            w = dense.weight(jnp.float32)
            norm = jnp.sqrt(jnp.sum(w * w, axis=tuple(range(n_in))))
            self.magnitude = nnx.data(nnx.LoRAParam(norm.astype(dtype), axes=axes[n_in:]))

    def delta(self, dtype=jnp.float32) -> jax.Array:
        """(alpha / r) A B in the kernel's layout (in..., out...)."""
        a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
        return self.scale * _contract(a, b, 1)

    def weight_norm(self, kernel: jax.Array) -> jax.Array:
        """||W + (alpha / r) A B|| over the input axes, in float32, detached."""
        w = kernel.astype(jnp.float32) + self.delta()
        n = jnp.sqrt(jnp.sum(w * w, axis=tuple(range(self.n_in))))
        return jax.lax.stop_gradient(n)

    def _dropout(self, x: jax.Array) -> jax.Array:
        seed = _SEED.get()
        if self.rate == 0.0 or seed is None:
            return x
        key = jax.random.fold_in(jax.random.key(seed), self.index)
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))

    def __call__(self, x: jax.Array, y: jax.Array, kernel: jax.Array) -> jax.Array:
        """`y` = x W (no bias) -> the adapted output (no bias)."""
        xd = self._dropout(x)
        a, b = self.lora_a[...].astype(x.dtype), self.lora_b[...].astype(x.dtype)
        lora = _contract(_contract(xd, a, self.n_in), b, 1) * jnp.asarray(self.scale, x.dtype)
        if self.magnitude is None:
            return y + lora
        mag = (self.magnitude[...].astype(jnp.float32) / self.weight_norm(kernel)).astype(x.dtype)
        base = y if xd is x else _contract(xd, kernel, self.n_in)
        return y + (mag - 1) * base + mag * lora


def dense_layers(model: nnx.Module) -> dict[str, Dense]:
    """Every Dense by dotted path ("model.layers.0.self_attn.q_proj"), in the
    hub checkpoint's order (vision blocks, then decoder layers; q, k, v, o, MLP)."""
    found = {
        ".".join(str(k) for k in path): m
        for path, m in nnx.iter_modules(model)
        if isinstance(m, Dense)
    }
    order = [".".join(str(k) for k in s.path[:-1]) for s in param_table(model.config)]
    return {p: found[p] for p in order if p in found}


def adapters(model: nnx.Module) -> dict[str, Adapter]:
    return {p: d.adapter for p, d in dense_layers(model).items() if d.adapter is not None}


def apply(model: nnx.Module, cfg: PeftConfig, targets: list[str] | None = None) -> list[str]:
    """Add adapters (and for QLoRA quantise the frozen base) in place; returns
    the adapted paths. `targets` (a resolved list) skips the selection."""
    cfg.validate()
    layers = dense_layers(model)
    if adapters(model):
        raise ValueError("the model already carries adapters: merge them first")
    targets = select(cfg, list(layers)) if targets is None else targets
    missing = [t for t in targets if t not in layers]
    if missing:
        raise ValueError(f"adapter target(s) not in the model: {missing[:3]}")
    key = jax.random.key(cfg.init_seed)
    for i, path in enumerate(targets):
        ad = Adapter(layers[path], cfg, jax.random.fold_in(key, i), index=i)
        layers[path].adapter = nnx.data(ad)
    if cfg.qtype:
        for path, dense in layers.items():
            if ADAPTABLE.fullmatch(path) and (cfg.vision or not path.startswith("visual.")):
                quant.quantize_dense(dense, cfg.qtype, cfg.tile_size)
    return targets


def merge(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its kernel (DoRA: m / ||W'|| (W + dAB)); a
    quantised kernel becomes a float kernel again. In place."""
    for dense in dense_layers(model).values():
        ad = dense.adapter
        if ad is None and dense.qtype is None:
            continue
        dtype = dense.kernel_scale[...].dtype if dense.qtype else dense.kernel[...].dtype
        w = dense.weight(jnp.float32)
        axes = dense.kernel.get_metadata().get("axes")
        if ad is not None:
            merged = w + ad.delta()
            if ad.magnitude is not None:
                merged = merged * (ad.magnitude[...].astype(jnp.float32) / ad.weight_norm(w))
            w = merged
        dense.kernel = nnx.Param(w.astype(dtype), axes=axes)
        dense.adapter = nnx.data(None)
        dense.kernel_scale = nnx.data(None)
        dense.qtype = None
    return model


@contextlib.contextmanager
def training_dropout(batch: dict) -> Iterator[None]:
    """Adapter dropout on for the forward passes traced inside, seeded from the
    batch's tokens: a function of the data alone, so a resumed run draws the
    same masks."""
    ids = batch["input_ids"].astype(jnp.uint32)
    pos = jnp.arange(ids.shape[-1], dtype=jnp.uint32) + jnp.uint32(1)
    seed = jnp.sum((ids + jnp.uint32(1)) * pos * jnp.uint32(2654435761)) & jnp.uint32(0x7FFFFFFF)
    token = _SEED.set(seed.astype(jnp.int32))
    try:
        yield
    finally:
        _SEED.reset(token)
