"""Building blocks shared by the vision tower and the decoder.

Every parameter carries `axes` metadata: logical axis names that
`tempura_jax.sharding` maps to mesh axes. Parameters are stored in
`param_dtype` and cast to the compute dtype at use; norms run in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(block: nnx.Module, policy: str, *args, **static):
    """Call `block(*args, **static)`, rematerialised under a named policy ("none":
    plain); `static` keyword values are Python constants, not traced."""
    if policy == "none":
        return block(*args, **static)
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; known: none, {sorted(REMAT_POLICIES)}")
    # Functional (split, then merge inside jax.checkpoint) rather than nnx.remat:
    # a block's forward mutates nothing, and nnx.remat's write-back of the
    # block's Variables fails on frozen ones (closed over by the step's grad
    # at another trace level: freezing a tower, or adapters on a frozen base).
    graphdef, state = nnx.split(block)

    def run(state, *a):
        return nnx.merge(graphdef, state)(*a, **static)

    return jax.checkpoint(run, policy=REMAT_POLICIES[policy])(state, *args)


def param(
    rngs: nnx.Rngs | None,
    shape: tuple[int, ...],
    axes: Axes,
    dtype: str,
    init: str = "normal",
    std: float = 0.02,
) -> nnx.Param:
    """A parameter initialised like HF (normal(std) weights, zero biases, unit norms)."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and axes {axes} differ in rank")
    if init == "normal":
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(init)
    return nnx.Param(value.astype(dtype), axes=axes)


class Dense(nnx.Module):
    """y = x . W (+ b), contracting the trailing `len(in_shape)` dims of x.

    Kernels keep head structure explicit, e.g. (embed, heads, head_dim), so
    tensor parallelism can shard heads without reshapes of the weights.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        axes: Axes,
        *,
        bias: bool,
        param_dtype: str,
        rngs: nnx.Rngs,
        std: float = 0.02,
    ):
        self.n_in = len(in_shape)
        self.kernel = param(rngs, (*in_shape, *out_shape), axes, param_dtype, std=std)
        self.bias = (
            param(rngs, out_shape, axes[self.n_in :], param_dtype, "zeros") if bias else None
        )
        # Set by tempura_jax.peft: a low-rank adapter, and QLoRA's quantised kernel.
        self.adapter = nnx.data(None)
        self.kernel_scale = nnx.data(None)
        self.qtype: str | None = None

    def weight(self, dtype) -> jax.Array:
        """The kernel in `dtype` (dequantised when QLoRA stores it quantised)."""
        if self.qtype is None:
            k = self.kernel[...]
            # No cast when the dtypes agree: qwix's interception (its own
            # LoRA/QLoRA) must see the parameter itself as the second operand.
            return k if getattr(k, "dtype", None) == jnp.dtype(dtype) else k.astype(dtype)
        from tempura_jax.peft.quant import dequantize

        return dequantize(self.kernel[...], self.kernel_scale[...], self.qtype, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.weight(x.dtype)
        dims = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x, k, (dims, ((), ())))
        if self.adapter is not None:
            y = self.adapter(x, y, k)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, axis_name: str, *, param_dtype: str, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, (dim,), (axis_name,), param_dtype, "ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Cast before scaling, like HF, so bf16 runs round the same way.
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


class GatedMLP(nnx.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        act: str,
        axes: tuple[str, str],
        *,
        bias: bool,
        param_dtype: str,
        rngs: nnx.Rngs,
    ):
        embed, mlp = axes
        kw = dict(bias=bias, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Dense((dim,), (hidden,), (embed, mlp), **kw)
        self.up_proj = Dense((dim,), (hidden,), (embed, mlp), **kw)
        self.down_proj = Dense((hidden,), (dim,), (mlp, embed), **kw)
        self.act = activation(act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: (..., S, H, D); cos/sin: (..., S, D), broadcast over heads, in float32."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def inv_freq(dim: int, theta: float) -> jax.Array:
    """Standard RoPE frequencies for a rotary dimension `dim` (dim/2 values)."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
