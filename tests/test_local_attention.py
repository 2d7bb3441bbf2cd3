"""Block-local attention (XLA) and the splash band mask against the dense reference.

Segments are what the vision tower makes (windows and frames of real grids,
padded to a bucket with -1), synthetic runs at odd lengths, and non-contiguous
ids, whose host check gives no bound (the dense path). Padding rows (ids < 0)
are not bounded: outputs are compared on real rows, gradients with a zero
cotangent on padding rows (the model never reads them).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pixels

import tempura_jax
from tempura_jax import config as C
from tempura_jax.model.vision_geometry import vision_geometry
from tempura_jax.ops import attention as attn
from tempura_jax.ops import block_local
from tempura_jax.ops.block_local import block_local_attention, segment_bound

REL = 1e-5
GRIDS = np.array([[1, 14, 24], [2, 10, 12], [1, 6, 8], [1, 14, 24]])  # 336, 2 x 120, 48, 336


def _geometry_ids(kind: str, n: int) -> np.ndarray:
    geo = vision_geometry(GRIDS, C.tiny().vision).padded(n, 4)
    return (geo.window_segments if kind == "windows" else geo.frame_segments)[None]


def _runs(n: int, longest: int, seed: int) -> np.ndarray:
    """Contiguous runs of 1..longest at length n, the last ~10% padding (-1)."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < int(n * 0.9):
        lengths.append(int(rng.integers(1, longest + 1)))
    ids = np.repeat(np.arange(len(lengths)), lengths)[: int(n * 0.9)]
    return np.r_[ids, np.full(n - ids.size, -1)][None].astype(np.int32)


def _inputs(b, n, hq, hkv, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, n, hq, d))
    k = jax.random.normal(ks[1], (b, n, hkv, d))
    v = jax.random.normal(ks[2], (b, n, hkv, d))
    return q, k, v, jax.random.normal(ks[3], (b, n, hq, d))


def _check(ours_fn, ref_fn, seg: np.ndarray, heads=(2, 2), d=16, batch=1):
    seg = np.broadcast_to(seg, (batch, seg.shape[-1]))
    q, k, v, cot = _inputs(batch, seg.shape[1], *heads, d)
    real = jnp.asarray(seg >= 0)[..., None, None]
    cot = jnp.where(real, cot, 0.0)
    outs = []
    for fn in (ours_fn, ref_fn):

        @jax.jit  # one program: eager op-by-op dispatch compiles every op on its own
        def grads(q, k, v, cot, seg, fn=fn):
            out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg), q, k, v)
            return (jnp.where(real, out, 0.0), *vjp(cot))

        outs.append(grads(q, k, v, cot, jnp.asarray(seg)))
    for name, a, r in zip(("out", "dq", "dk", "dv"), *outs, strict=True):
        err, scale = float(jnp.abs(a - r).max()), float(jnp.abs(r).max())
        assert err <= REL * scale, f"{name}: {err} vs {scale}"
        assert scale > 0.05, name  # values that prove something


def _dense(causal=False):
    return lambda q, k, v, seg: attn.xla_attention(q, k, v, seg, causal=causal, scale=0.25)


def _local(bound, causal=False):
    def run(q, k, v, seg):
        return block_local_attention(q, k, v, seg, bound=bound, causal=causal, scale=0.25)

    return run


def _equal_frames(n: int, frame: int) -> np.ndarray:
    """TEMPURA's per-frame layout: equal frames back to back, then padding."""
    ids = np.repeat(np.arange(n // frame), frame)
    return np.r_[ids, np.full(n - ids.size, -1)][None].astype(np.int32)


@pytest.mark.parametrize(
    ("kind", "n"),
    [("windows", 1000), ("frames", 1000), ("runs", 901), ("runs", 999), ("aligned", 999)],
)
def test_block_local_equals_dense(kind, n):
    if kind == "aligned":
        seg = _equal_frames(n, 100)
    else:
        seg = _runs(n, 100, n) if kind == "runs" else _geometry_ids(kind, n)
    bound = block_local.static_bound(seg)
    want = {"windows": 64, "frames": 384, "runs": 128, "aligned": block_local.Aligned(100)}
    assert bound == want[kind]
    assert block_local.worthwhile(bound, n)  # the block-local path is the one tested
    _check(_local(bound), _dense(), seg)


def test_block_local_gqa_causal_batch():
    """GQA grouping, a causal cut inside the span and rows with different ids."""
    seg = np.concatenate([_runs(333, 40, 1), _runs(333, 64, 2)])
    bound = segment_bound(seg)
    assert bound == 64
    _check(_local(bound, True), _dense(True), seg, heads=(4, 2), batch=2)


def _packed_rows(n: int, longest: int, seed: int) -> np.ndarray:
    """Packed decoder rows: samples of 1..longest tokens with padding (-1) gaps
    between some of them (a record that failed to decode) and at the end."""
    rng = np.random.default_rng(seed)
    ids, j = [], 0
    while len(ids) < n:
        ids += [j] * int(rng.integers(1, longest + 1)) + [-1] * int(rng.integers(0, 2) * 37)
        j += 1
    return np.array(ids[: n - 50] + [-1] * 50, np.int32)[None]


def test_causal_block_local_takes_only_earlier_blocks():
    """Packed rows (the decoder's `text_bound`): exact against the dense causal
    reference, visiting r + 1 key blocks per query block instead of 2r + 1."""
    seg = _packed_rows(1001, 300, 3)
    bound = segment_bound(seg)
    assert bound == 384 and block_local.layout(bound) == (128, 3)
    assert block_local.span(bound, causal=True) == 512 and block_local.span(bound) == 896
    assert block_local.worthwhile(bound, 1001, causal=True)
    assert not block_local.worthwhile(bound, 768) and block_local.worthwhile(bound, 768, True)
    _check(_local(bound, True), _dense(True), seg, heads=(4, 2))
    q, k, v, _ = _inputs(1, 1001, 4, 2, 16)

    def cost(causal):
        fn = jax.jit(_local(bound, causal))
        return fn.lower(q, k, v, jnp.asarray(seg)).cost_analysis()["flops"]

    assert cost(True) / cost(False) == pytest.approx(4 / 7, rel=0.05)


def test_segment_bound_host_check():
    assert segment_bound(np.array([[0, 0, 1, 1, 1, -1, -1, -1]])) == 64
    assert segment_bound(np.repeat(np.arange(3), 300)[None]) == 384
    assert segment_bound(np.array([[0, 0, 1, 1, 0]])) is None  # id 0 in two runs
    assert segment_bound(np.array([[0, 1], [1, 1]])) == 64  # rows are separate
    assert segment_bound(np.full((2, 9), -1)) is None  # padding only
    frames = np.repeat(np.arange(3), 300)[None]
    assert block_local.aligned_bound(frames) == block_local.Aligned(300)
    assert block_local.aligned_bound(np.r_[frames[0], 0][None]) is None  # non-contiguous
    assert block_local.aligned_bound(np.repeat([0, 1, 2], [300, 200, 300])[None]) is None
    assert block_local.span(block_local.Aligned(300)) == 300
    assert [block_local.round_bound(x) for x in (1, 64, 65, 128, 129, 336)] == [
        64,
        64,
        128,
        128,
        256,
        384,
    ]


def test_non_contiguous_ids_take_the_dense_path():
    """Random ids have no bound, so `attention` stays on the exact reference."""
    seg = np.random.default_rng(0).integers(0, 3, (1, 700)).astype(np.int32)
    bound = segment_bound(seg)
    assert bound is None

    def dispatched(q, k, v, seg):
        return attn.attention(q, k, v, segment_ids=seg, scale=0.25, segment_bound=bound)

    _check(dispatched, _dense(), seg)


def test_dispatch_runs_block_local_only_when_it_pays(monkeypatch):
    calls = []
    real = attn.block_local_attention

    def counting(*args, **kwargs):
        calls.append(kwargs["bound"])
        return real(*args, **kwargs)

    monkeypatch.setattr(attn, "block_local_attention", counting)
    q, k, v, _ = _inputs(1, 1000, 2, 2, 8)
    seg = jnp.asarray(_geometry_ids("windows", 1000))
    trace = jax.eval_shape  # tracing is enough to see the dispatch
    for impl in ("xla", "auto"):
        trace(lambda i=impl: attn.attention(q, k, v, segment_ids=seg, impl=i, segment_bound=64))
    qs, ks, vs, ss = (x[:, :150] for x in (q, k, v, seg))
    trace(lambda: attn.attention(qs, ks, vs, segment_ids=ss, segment_bound=64))
    trace(lambda: attn.attention(q, k, v, segment_ids=seg))  # no bound
    assert calls == [64, 64]  # span 192 >= 150: dense


@pytest.mark.parametrize(
    ("kind", "causal"), [("windows", False), ("runs", True), ("aligned", False)]
)
def test_splash_band_mask_equals_dense(kind, causal):
    """Splash (interpret mode, 128-blocks) with the band mask from the same bound."""

    n = 1000 if kind == "windows" else 400
    if kind == "aligned":
        seg = _equal_frames(n, 90)
    else:
        seg = _runs(n, 50, 3) if kind == "runs" else _geometry_ids(kind, n)
    bound = block_local.static_bound(seg)
    assert isinstance(bound, block_local.Aligned) == (kind == "aligned")

    def splash(q, k, v, seg):
        return attn._splash(q, k, v, seg, causal=causal, scale=0.25, interpret=True, band=bound)

    _check(splash, _dense(causal), seg)


def test_vision_tower_with_bounds_equals_without(monkeypatch):
    """The tiny tower on real grids, padded to a bucket: features and parameter
    gradients with the host-derived bounds (block-local in windows and frames)
    equal the dense ones."""
    from flax import nnx

    calls = []
    real = attn.block_local_attention
    monkeypatch.setattr(
        attn, "block_local_attention", lambda *a, **kw: calls.append(kw["bound"]) or real(*a, **kw)
    )
    cfg = C.tiny()
    model = tempura_jax.Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))
    inputs = tempura_jax.prepare_inputs(
        cfg,
        _ids(cfg),
        pixel_values=pixels(GRIDS, seed=1),
        image_grid_thw=GRIDS,
        patch_bucket=1024,
    ).vision
    assert (inputs.window_bound, inputs.frame_bound) == (64, 384)
    dense = dataclasses.replace(inputs, window_bound=None, frame_bound=None)
    n_real = int(GRIDS.prod(-1).sum()) // 4
    graphdef, params = nnx.split(model.visual)

    def loss(p, vis):
        feats = nnx.merge(graphdef, p)(jax.tree.map(jnp.asarray, vis))[:n_real]
        return (feats * jnp.cos(jnp.arange(feats.size).reshape(feats.shape))).sum(), feats

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, ours), g_ours = grad(params, inputs)
    (_, ref), g_ref = grad(params, dense)
    assert sorted(set(calls)) == [64, 384]
    assert float(jnp.abs(ours - ref).max()) <= REL * float(jnp.abs(ref).max())
    for a, r in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()))


def _ids(cfg):
    n = int(GRIDS.prod(-1).sum()) // 4
    return np.array([[1, cfg.vision_start_token_id] + [cfg.image_token_id] * n + [2]])


def test_run_bounds_cover_every_frame_the_processor_makes():
    """The trainer's frame bound (pixel budget) holds for any accepted aspect
    ratio; batches outside the step's bounds are refused on the host."""
    from tempura_jax.data.processor import PixelConfig, max_frame_patches, smart_resize
    from tempura_jax.model.vision_geometry import config_bounds
    from tempura_jax.train.step import check_vision_bounds

    for px in (PixelConfig(), PixelConfig(min_pixels=3136, max_pixels=200_000)):
        bound = max_frame_patches(px)
        sides = np.unique(np.geomspace(2, 4000, 90).astype(int))
        seen = max(
            (lambda hw: hw[0] * hw[1] // px.patch_size**2)(
                smart_resize(h, w, px.factor, px.min_pixels, px.max_pixels)
            )
            for h in sides
            for w in sides
            if max(h, w) / min(h, w) <= 200
        )
        assert seen <= bound <= 1.05 * seen
    assert max_frame_patches(PixelConfig()) == 592  # TEMPURA: 336 at 16:9
    assert config_bounds(C.tiny().vision, 592) == (64, 640)
    batch = {"window_segments": _geometry_ids("windows", 1000)}
    batch["frame_segments"] = _geometry_ids("frames", 1000)
    check_vision_bounds(batch, (64, 384))
    check_vision_bounds(batch, (None, None))
    with pytest.raises(ValueError, match="frame_segments: a run of 336, .* <= 256"):
        check_vision_bounds(batch, (64, 256))
    batch["window_segments"] = np.array([[0, 0, 1, 0]])
    with pytest.raises(ValueError, match="window_segments: non-contiguous ids"):
        check_vision_bounds(batch, (64, 384))
    batch = {"window_segments": batch["frame_segments"], "frame_segments": _equal_frames(999, 100)}
    check_vision_bounds(batch, (None, block_local.Aligned(100)))
    with pytest.raises(ValueError, match="a run across a block of 128"):
        check_vision_bounds(batch, (None, block_local.Aligned(128)))


def test_splash_band_skips_blocks_and_lowers_for_tpu(monkeypatch):
    """The band's block grid: 3 of 8 key blocks per query block at L = 64; the
    banded kernel lowers natively for TPU (Mosaic), forward and backward."""
    from jax import export
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask_info as mask_info,
    )

    from tempura_jax.ops.splash_tpu import _static_mask

    def grid(band):
        info, _ = mask_info.process_mask(
            masks.MultiHeadMask([_static_mask(1024, False, band)]), (128, 128)
        )
        return np.asarray(info.data_next).shape[-1]

    assert (grid(64), grid(None)) == (3, 8)
    monkeypatch.setattr(attn, "platform", lambda: "tpu")
    seg = jax.ShapeDtypeStruct((1, 1024), jnp.int32)
    x = jax.ShapeDtypeStruct((1, 1024, 2, 80), jnp.bfloat16)

    def loss(q, k, v, seg):
        out = attn.attention(q, k, v, segment_ids=seg, impl="splash", segment_bound=64)
        return out.astype(jnp.float32).sum()

    check = export.DisabledSafetyCheck.custom_call("tpu_custom_call")
    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["tpu"], disabled_checks=[check]
    )(x, x, x, seg)
    assert "tpu_custom_call" in exported.mlir_module()
