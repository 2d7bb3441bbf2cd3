"""One attention entry point for the vision tower and the decoder.

Masks are expressed as segment ids (tokens attend only within their segment;
padding is a segment of its own) plus an optional causal constraint, which
covers windows, per-frame full attention, padding and packed sequences.

Backends register by name with the case they cannot take; `auto` picks the
fastest that can per platform, and a choice that cannot take a case (`auto`
on an accelerator included) falls back to the `xla` reference with a one-time
log line (never silently wrong). Pallas backends run in interpret mode on CPU,
which is how tests check them against the reference; on the other accelerator
(splash on a GPU) they fall back like any case they cannot take.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from tempura_jax.ops import cudnn
from tempura_jax.ops.block_local import Bound, block_local_attention, length, worthwhile
from tempura_jax.ops.local import run_local

log = logging.getLogger(__name__)

IMPLS = ("auto", "xla", "cudnn", "pallas_gpu", "splash")


@dataclasses.dataclass(frozen=True)
class Case:
    """What a backend needs to know to accept a call (all static)."""

    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    dtype: jnp.dtype
    causal: bool
    has_segments: bool
    right_padded: bool
    platform: str
    cached: bool = False  # queries at an offset into a KV cache (decoding)


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    # (q, k, v, segment_ids, *, causal, scale, interpret) -> out
    run: Callable[..., jax.Array]
    # Why the backend cannot take a case on a platform it runs on (None: it can).
    unsupported: Callable[[Case], str | None]
    platforms: tuple[str, ...]  # native platforms
    interpretable: bool  # Pallas: runs (slowly, exactly) in interpret mode on CPU
    per_device: bool  # opaque to the partitioner: wrap in shard_map under a mesh
    banded: bool = False  # run takes `band=`: a segment-length bound it may skip by


BACKENDS: dict[str, Backend] = {}
AUTO_ORDER = {"gpu": ("cudnn", "pallas_gpu"), "tpu": ("splash",), "cpu": ()}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


@functools.cache
def _log_once(message: str) -> None:
    log.warning(message)


def platform() -> str:
    """The platform being compiled for: that of the mesh in context
    (`jax.set_mesh`), which may be a TPU slice or GPUs this machine does not
    have (ahead-of-time compiles); without a mesh, the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    name = device.platform if device is not None else jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def why_not(backend: Backend, case: Case) -> str | None:
    interpreted = backend.interpretable and case.platform == "cpu"
    if case.platform not in backend.platforms and not interpreted:
        return f"needs {'/'.join(backend.platforms)}, running on {case.platform}"
    return backend.unsupported(case)


def _auto_declines(name: str, case: Case) -> str | None:
    """auto's own rule on top of the backend's: float32 asks for float32 accuracy,
    which the Pallas GPU kernel gives only with IEEE dots (no tensor cores), so
    auto leaves float32 to XLA, which follows `jax_default_matmul_precision`.
    An explicit `pallas_gpu` still runs float32 (IEEE)."""
    if name == "pallas_gpu" and case.dtype == jnp.float32:
        return "float32 (auto keeps it on xla)"
    return None


def select(impl: str, case: Case) -> tuple[Backend, bool]:
    """(backend, interpret) for a call; logs each fallback once."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r}; known: {', '.join(IMPLS)}")
    if impl == "auto":
        reasons = []
        for name in AUTO_ORDER.get(case.platform, ()):
            reason = why_not(BACKENDS[name], case) or _auto_declines(name, case)
            if reason is None:
                return BACKENDS[name], False
            reasons.append(f"{name}: {reason}")
        if reasons:  # a platform with kernels, none of which takes this case
            shapes = f"q{case.q_shape} k{case.k_shape}"
            _log_once(f"attention_impl=auto cannot take {shapes} ({'; '.join(reasons)}); using xla")
        return BACKENDS["xla"], False
    backend = BACKENDS[impl]
    reason = why_not(backend, case)
    if reason is not None:
        _log_once(f"attention_impl={impl} cannot take q{case.q_shape} ({reason}); using xla")
        return BACKENDS["xla"], False
    interpret = case.platform not in backend.platforms
    if interpret:
        _log_once(f"attention_impl={impl} on {case.platform}: Pallas interpret mode (slow)")
    return backend, interpret


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    impl: str = "xla",
    right_padded: bool = False,
    kv_segment_ids: jax.Array | None = None,
    q_offset: jax.Array | None = None,
    segment_bound: Bound | None = None,
) -> jax.Array:
    """q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D) with Hq a multiple of Hkv (GQA);
    segment_ids: (B, Sq) int. `right_padded` promises each row is one segment
    followed by padding (lets cuDNN take it). Returns (B, Sq, Hq, D) in q's dtype.

    Decoding against a KV cache: `kv_segment_ids` (B, Sk) are the cache slots'
    ids (0 = empty) and `q_offset` the cache index of the first query, so the
    causal mask compares absolute positions. Only the reference takes this.

    `segment_bound` (static) promises every segment with an id >= 0 is one
    contiguous run of at most that many positions (`block_local.segment_bound`
    checks it on the host); `xla` then runs block-local and `splash` a band
    mask, both exact (`block_local.Aligned(L)`: each segment inside one aligned
    block of L). Padding (ids < 0) is not bounded: its rows are unused."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {k.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cached = kv_segment_ids is not None or q_offset is not None
    case = Case(
        q.shape, k.shape, q.dtype, causal, segment_ids is not None, right_padded, platform(), cached
    )
    backend, interpret = select(impl, case)
    if cached:
        return xla_attention(
            q, k, v, segment_ids, causal=causal, scale=scale,
            kv_segment_ids=kv_segment_ids, q_offset=q_offset,
        )  # fmt: skip

    band = segment_bound if segment_ids is not None and q.shape[1] == k.shape[1] else None
    kw = {"band": band} if backend.banded and band is not None else {}

    def kernel(q, k, v, seg):
        return backend.run(q, k, v, seg, causal=causal, scale=scale, interpret=interpret, **kw)

    if backend.per_device:
        return run_local(kernel, q, k, v, segment_ids)
    return kernel(q, k, v, segment_ids)


def mask_from(
    segment_ids: jax.Array | None,
    causal: bool,
    sq: int,
    sk: int,
    kv_segment_ids: jax.Array | None = None,
    q_offset: jax.Array | None = None,
) -> jax.Array | None:
    """(B|1, 1, 1, Sq, Sk) boolean mask broadcastable over (B, Hkv, G, Sq, Sk).
    Queries sit at positions q_offset + i (default: the last Sq of the keys)."""
    mask = None
    kv_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == kv_ids[:, None, :])[:, None, None]
    if causal:
        start = sk - sq if q_offset is None else q_offset
        rows = start + jnp.arange(sq)
        tri = (jnp.arange(sk)[None, :] <= rows[:, None])[None, None, None]
        mask = tri if mask is None else mask & tri
    return mask


def xla_attention(
    q, k, v, segment_ids=None, *, causal, scale, interpret=False, kv_segment_ids=None,
    q_offset=None,
):  # fmt: skip
    """The reference: dense logits, GQA by grouping query heads (no K/V repeat)."""
    del interpret
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, sq, hkv, hq // hkv, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    mask = mask_from(segment_ids, causal, sq, k.shape[1], kv_segment_ids, q_offset)
    if mask is not None:
        # A finite floor keeps fully-masked rows (padding queries) NaN-free.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v)
    return out.reshape(b, sq, hq, d).astype(q.dtype)


def _xla(q, k, v, seg, *, causal, scale, interpret=False, band=None):
    """The `xla` backend: block-local when a bound makes it pay, else the reference."""
    if band is not None and seg is not None and worthwhile(band, q.shape[1], causal):
        return block_local_attention(q, k, v, seg, bound=band, causal=causal, scale=scale)
    return xla_attention(q, k, v, seg, causal=causal, scale=scale)


def _self_attention_only(case: Case) -> str | None:
    if case.cached:
        return "queries offset into a KV cache (decoding)"
    if case.q_shape[1] != case.k_shape[1]:
        return "query and key lengths differ (the kernel is for self-attention)"
    if not jnp.issubdtype(case.dtype, jnp.floating):
        return f"dtype {case.dtype}"
    return None


def _pallas_gpu(q, k, v, seg, *, causal, scale, interpret):
    from tempura_jax.ops.flash_gpu import FlashConfig, flash_attention

    cfg = FlashConfig(interpret=interpret)
    if interpret:  # small tiles keep interpret-mode tests fast
        cfg = dataclasses.replace(cfg, block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)
    return flash_attention(q, k, v, seg, causal=causal, scale=scale, config=cfg)


def _splash(q, k, v, seg, *, causal, scale, interpret, band=None):
    from tempura_jax.ops.splash_tpu import SplashConfig, splash_attention

    cfg = SplashConfig(block=128 if interpret else 512, interpret=interpret)
    band = None if band is None else length(band)
    return splash_attention(q, k, v, seg, causal=causal, scale=scale, config=cfg, band=band)


def _triton_missing() -> str | None:
    """Pallas's Triton backend is deprecated from jax 0.11 and may be removed:
    without it pallas_gpu falls back here instead of failing at trace time."""
    try:
        importlib.import_module("jax.experimental.pallas.triton")
    except ImportError as e:
        return f"the Pallas Triton backend does not import ({e})"
    return None


def _pallas_gpu_unsupported(case: Case) -> str | None:
    if missing := _triton_missing():
        return missing
    if case.q_shape[-1] > 256:
        return f"head_dim {case.q_shape[-1]} > 256"
    return _self_attention_only(case)


def _cudnn(q, k, v, seg, *, causal, scale, interpret):
    del interpret
    return cudnn.cudnn_attention(q, k, v, seg, causal=causal, scale=scale)


def _cudnn_unsupported(case: Case) -> str | None:
    probe = jax.ShapeDtypeStruct(case.q_shape, case.dtype)
    key = jax.ShapeDtypeStruct(case.k_shape, case.dtype)
    if case.cached:
        return "queries offset into a KV cache (decoding)"
    return cudnn.unsupported(probe, key, case.has_segments, case.right_padded)


register(Backend("xla", _xla, lambda case: None, ("cpu", "gpu", "tpu"), False, False, True))
register(Backend("cudnn", _cudnn, _cudnn_unsupported, ("gpu",), False, True))
register(Backend("pallas_gpu", _pallas_gpu, _pallas_gpu_unsupported, ("gpu",), True, True))
register(Backend("splash", _splash, _self_attention_only, ("tpu",), True, True, True))
