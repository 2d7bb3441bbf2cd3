"""QLoRA's frozen base: Dense kernels stored as nf4 or int8 with qwix's
quantiser, one scale per output channel and per `tile_size` input features,
dequantised to the compute dtype at use (like bitsandbytes' 4-bit base)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

QTYPES = {"nf4": "nf4", "int8": jnp.int8}


class QuantizedKernel(nnx.Variable):
    """The quantised values of a frozen kernel (never trained, never saved)."""


class KernelScale(nnx.Variable):
    """Per-channel, per-tile scales of a `QuantizedKernel`."""


def tiled_axes(shape: tuple[int, ...], n_in: int, tile: int) -> dict[int, int]:
    """Tile the innermost input axis when `tile` divides it; else per channel."""
    last = shape[n_in - 1]
    return {n_in - 1: tile} if last > tile and last % tile == 0 else {}


def quantize(kernel: jax.Array, n_in: int, qtype: str, tile: int) -> tuple[jax.Array, jax.Array]:
    """(values, scales) of a kernel shaped (in..., out...)."""
    q = qwix.quantize(
        kernel.astype(jnp.float32),
        QTYPES[qtype],
        channelwise_axes=tuple(range(n_in, kernel.ndim)),
        tiled_axes=tiled_axes(kernel.shape, n_in, tile),
    )
    return q.qvalue, q.scale


def dequantize(values: jax.Array, scales: jax.Array, qtype: str, dtype) -> jax.Array:
    return qwix.dequantize(qwix.QArray(values, scales, None, QTYPES[qtype])).astype(dtype)


def quantize_dense(dense: nnx.Module, qtype: str, tile: int) -> None:
    """Replace a Dense's float kernel by its quantised form, in place."""
    kernel = dense.kernel
    axes = kernel.get_metadata().get("axes")
    values, scales = quantize(kernel[...], dense.n_in, qtype, tile)
    sharding = getattr(kernel[...], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        values = jax.device_put(values, sharding)
    dense.kernel = QuantizedKernel(values, axes=axes)
    dense.kernel_scale = nnx.data(KernelScale(scales, axes=axes))
    dense.qtype = qtype


def nbytes(values: jax.Array) -> int:
    """Storage bytes (4-bit values count half a byte)."""
    bits = 4 if values.dtype in (jnp.uint4, jnp.int4) else np.dtype(values.dtype).itemsize * 8
    return values.size * bits // 8
