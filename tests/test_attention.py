"""Attention backends against the XLA reference (Pallas kernels in interpret mode on CPU).

Masks cover what the model produces: GQA, causal decoder rows with right
padding, packed segments, vision windows (contiguous runs with -1 padding),
arbitrary non-contiguous ids, and lengths that are not block multiples.
"""

import dataclasses
import importlib.util
import logging
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import IMAGE, pixels, vision_block

import tempura_jax
from tempura_jax.ops import attention as attn
from tempura_jax.ops.blocks import block_ranges, pad_segments, visited_fraction
from tempura_jax.ops.cudnn import cudnn_attention
from tempura_jax.sharding import make_mesh

TOL = 2e-5


def _runs(lengths, first=1):
    return np.concatenate([np.full(n, first + i) for i, n in enumerate(lengths)])


def _segments(kind: str, b: int, s: int, rng) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "padding":  # decoder rows: one sequence, then zeros
        lengths = [s, s - 9, 1, s - 20][:b]
        return np.stack([np.r_[np.ones(n), np.zeros(s - n)] for n in lengths]).astype(np.int32)
    if kind == "packed":  # several sequences per row, then padding
        rows = [np.r_[_runs([7, 12, s - 23]), np.zeros(4)][:s] for _ in range(b)]
        return np.stack(rows).astype(np.int32)
    if kind == "windows":  # vision: windows of <= 16 tokens, tail padding -1
        row = np.r_[_runs([16, 8, 16, 4, 16], first=0), np.full(s - 60, -1)]
        return np.stack([row] * b).astype(np.int32)
    if kind == "random":  # non-contiguous ids: correctness without block skipping
        return rng.integers(0, 3, (b, s)).astype(np.int32)
    raise ValueError(kind)


CASES = [
    # (name, B, S, Hq, Hkv, D, causal, segments)
    ("gqa_causal_padding", 2, 45, 4, 2, 32, True, "padding"),
    ("mqa_causal_packed", 2, 37, 4, 1, 16, True, "packed"),
    ("vision_windows", 2, 67, 2, 2, 40, False, "windows"),
    ("full_no_segments", 1, 33, 2, 2, 24, False, "none"),
    ("causal_no_segments", 2, 29, 4, 2, 32, True, "none"),
    ("random_ids", 2, 50, 4, 2, 16, False, "random"),
]


def _inputs(b, s, hq, hkv, d, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, s, hq, d))
    k = jax.random.normal(ks[1], (b, s, hkv, d))
    v = jax.random.normal(ks[2], (b, s, hkv, d))
    return q, k, v, jax.random.normal(ks[3], (b, s, hq, d))


def _value_and_grads(fn, q, k, v, cot):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(cot))


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_equals_reference(impl, case):
    _, b, s, hq, hkv, d, causal, kind = case
    q, k, v, cot = _inputs(b, s, hq, hkv, d)
    seg = _segments(kind, b, s, np.random.default_rng(0))
    seg = None if seg is None else jnp.asarray(seg)

    def run(impl):
        return lambda q, k, v: attn.attention(q, k, v, segment_ids=seg, causal=causal, impl=impl)

    ours = _value_and_grads(run(impl), q, k, v, cot)
    ref = _value_and_grads(run("xla"), q, k, v, cot)
    for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        assert a.shape == r.shape, name
        err = float(jnp.abs(a - r).max())
        assert err <= TOL * max(1.0, float(jnp.abs(r).max())), f"{name}: {err}"
    assert float(jnp.abs(ref[1]).max()) > 0.1  # gradients that prove something


def test_pallas_gpu_bfloat16_close_to_reference():
    q, k, v, cot = (x.astype(jnp.bfloat16) for x in _inputs(2, 40, 4, 2, 32))
    seg = jnp.asarray(_segments("packed", 2, 40, None))
    args = dict(segment_ids=seg, causal=True)
    ours = attn.attention(q, k, v, impl="pallas_gpu", **args).astype(jnp.float32)
    ref = attn.attention(*(x.astype(jnp.float32) for x in (q, k, v)), impl="xla", **args)
    assert float(jnp.abs(ours - ref).max()) < 3e-2


def test_cudnn_length_translation_matches_reference():
    """The cuDNN call's masks (causal + lengths from right-padded ids), run through
    `jax.nn.dot_product_attention`'s XLA path: real rows equal the reference."""
    q, k, v, _ = _inputs(3, 30, 4, 2, 16)
    seg = _segments("padding", 3, 30, None)
    ours = cudnn_attention(q, k, v, jnp.asarray(seg), causal=True, scale=0.25, implementation="xla")
    ref = attn.xla_attention(q, k, v, jnp.asarray(seg), causal=True, scale=0.25)
    real = seg.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(ref)[real], atol=1e-5)


@pytest.mark.parametrize(("kind", "causal"), [("padding", True), ("windows", False)])
def test_bench_chunked_reference_equals_dense(kind, causal, monkeypatch):
    """bench/attention.py's memory-lean reference (query chunks, padded to a
    chunk multiple) gives the dense reference's output and gradients."""
    path = Path(__file__).resolve().parents[1] / "bench" / "attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    q, k, v, cot = _inputs(2, 45, 4, 2, 16)
    seg = jnp.asarray(_segments(kind, 2, 67, None)[:, :45])

    def chunked(q, k, v):
        return bench.xla_chunked(q, k, v, seg, causal=causal, scale=0.25, chunk=16)

    def dense(q, k, v):
        return attn.xla_attention(q, k, v, seg, causal=causal, scale=0.25)

    ours, ref = (_value_and_grads(f, q, k, v, cot) for f in (chunked, dense))
    for a, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, r, atol=1e-5, rtol=1e-5)


def test_block_ranges_skip_other_windows():
    """Windows of 64 in 1024 tokens with 64-blocks: each query block visits one key block."""
    seg = jnp.asarray(np.repeat(np.arange(16), 64)[None])
    r = block_ranges(seg, 64, 64, causal=False)
    np.testing.assert_array_equal(r.k_hi - r.k_lo, np.ones((1, 16)))
    assert float(visited_fraction(r, 16)) == pytest.approx(1 / 16)
    # Causal rows without segments visit the lower triangle only.
    causal = block_ranges(jnp.zeros((1, 256), jnp.int32), 64, 64, causal=True)
    np.testing.assert_array_equal(causal.k_hi, [[1, 2, 3, 4]])
    np.testing.assert_array_equal(causal.q_lo, [[0, 1, 2, 3]])


def test_padding_tail_is_its_own_segment():
    seg = pad_segments(jnp.asarray([[1, 1, 2, 0]]), 1, 4, 7)
    np.testing.assert_array_equal(seg, [[1, 1, 2, 0, 3, 3, 3]])


def _case(dtype=jnp.bfloat16, segments=True, right_padded=False, sk=64, d=128):
    return attn.Case((2, 64, 8, d), (2, sk, 2, d), dtype, True, segments, right_padded, "gpu")


def test_auto_selection_per_case():
    assert attn.select("auto", _case(right_padded=True))[0].name == "cudnn"
    assert attn.select("auto", _case(segments=False))[0].name == "cudnn"
    assert attn.select("auto", _case())[0].name == "pallas_gpu"  # windows / packed
    assert attn.select("auto", _case(dtype=jnp.float32))[0].name == "xla"  # see below
    assert attn.select("pallas_gpu", _case(dtype=jnp.float32))[0].name == "pallas_gpu"
    assert attn.select("auto", _case(sk=96))[0].name == "xla"  # cross lengths
    odd = attn.Case((2, 63, 8, 128), (2, 63, 2, 128), jnp.bfloat16, True, True, True, "gpu")
    assert attn.select("auto", odd)[0].name == "pallas_gpu"  # cuDNN training needs even
    tpu = attn.Case((1, 8, 2, 64), (1, 8, 2, 64), jnp.bfloat16, False, True, False, "tpu")
    assert attn.select("auto", tpu)[0].name == "splash"
    cpu = attn.Case((1, 8, 2, 64), (1, 8, 2, 64), jnp.float32, False, True, False, "cpu")
    assert attn.select("auto", cpu)[0].name == "xla"


def _dot_precisions(jaxpr) -> list:
    """The precision of every dot_general in `jaxpr` and the jaxprs in its params."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    found += _dot_precisions(sub)
    return found


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_gpu_float32_dots_are_float32(dtype):
    """Triton would run float32 dots as TF32: the kernel asks for HIGHEST
    (Triton's IEEE) on float32 inputs and leaves 16-bit dots at the default."""
    q = jnp.ones((1, 32, 2, 16), dtype)
    fn = jax.grad(lambda q: attn.attention(q, q, q, causal=True, impl="pallas_gpu").sum())
    precisions = _dot_precisions(jax.make_jaxpr(fn)(q).jaxpr)
    # The kernels' dots: forward 2, dq 3, dk/dv 4; the backward's delta is an XLA einsum.
    kernel = (jax.lax.Precision.HIGHEST,) * 2 if dtype == jnp.float32 else None
    assert sorted(precisions, key=str) == sorted([kernel] * 9 + [None], key=str), precisions


def test_fallback_is_logged_once(caplog):
    attn._log_once.cache_clear()
    q = jnp.ones((1, 8, 2, 16))
    with caplog.at_level(logging.WARNING, logger="tempura_jax.ops.attention"):
        for _ in range(3):
            out = attn.attention(q, q, q, impl="cudnn")
    lines = [r.getMessage() for r in caplog.records if "cudnn" in r.getMessage()]
    assert len(lines) == 1 and "using xla" in lines[0] and "needs gpu" in lines[0]
    np.testing.assert_allclose(out, attn.attention(q, q, q, impl="xla"))


@pytest.mark.parametrize(("impl", "plat"), [("splash", "gpu"), ("pallas_gpu", "tpu")])
def test_kernel_on_another_accelerator_falls_back(impl, plat, monkeypatch, caplog):
    """Interpret mode is for CPU tests: a Pallas kernel asked for on the other
    accelerator runs the reference (one log line), not its interpreter."""
    attn._log_once.cache_clear()
    monkeypatch.setattr(attn, "platform", lambda: plat)
    q = jnp.ones((1, 8, 2, 16))
    with caplog.at_level(logging.WARNING, logger="tempura_jax.ops.attention"):
        for _ in range(2):
            jaxpr = str(jax.make_jaxpr(lambda q: attn.attention(q, q, q, impl=impl))(q))
            assert "pallas_call" not in jaxpr
    lines = [r.getMessage() for r in caplog.records]
    needs = "tpu" if impl == "splash" else "gpu"
    assert lines == [f"attention_impl={impl} cannot take q(1, 8, 2, 16) (needs {needs}, "
                     f"running on {plat}); using xla"]  # fmt: skip
    # On CPU the same request runs the kernel, interpreted.
    cpu = dataclasses.replace(_case(), platform="cpu")
    assert attn.select(impl, cpu) == (attn.BACKENDS[impl], True)


def test_pallas_gpu_without_triton_falls_back(monkeypatch, caplog):
    """A JAX without the Pallas Triton backend (deprecated in 0.11): pallas_gpu
    and auto use xla, with the log line, instead of failing at trace time."""
    attn._log_once.cache_clear()
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)
    q = jnp.ones((1, 8, 2, 16))
    with caplog.at_level(logging.WARNING, logger="tempura_jax.ops.attention"):
        out = attn.attention(q, q, q, impl="pallas_gpu")
        assert attn.select("auto", _case())[0].name == "xla"  # windows on a GPU
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("Pallas Triton backend does not import" in m for m in lines)
    assert lines[0].startswith("attention_impl=pallas_gpu") and "using xla" in lines[0]
    np.testing.assert_allclose(out, attn.attention(q, q, q, impl="xla"))


def test_auto_fallback_is_logged_once(caplog):
    """auto on a GPU with cross lengths: no kernel takes it, and the log says why."""
    attn._log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="tempura_jax.ops.attention"):
        for _ in range(3):
            assert attn.select("auto", _case(sk=96))[0].name == "xla"
        assert attn.select("auto", _case())[0].name == "pallas_gpu"  # no log line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("attention_impl=auto cannot take q(2, 64, 8, 128) k(2, 96, 2, 128)")
    assert "pallas_gpu: query and key lengths differ" in lines[0] and "using xla" in lines[0]


def test_bad_requests_raise():
    q = jnp.ones((1, 4, 3, 8))
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'"):
        attn.attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match="query heads 3 not a multiple of kv heads 2"):
        attn.attention(q, jnp.ones((1, 4, 2, 8)), jnp.ones((1, 4, 2, 8)))


def test_kernel_under_a_mesh_runs_per_device():
    """Batch over (data, fsdp) and heads over tensor via shard_map: same result."""
    mesh = make_mesh((2, 2, 2))
    q, k, v, cot = _inputs(4, 30, 4, 2, 16, seed=1)
    seg = jnp.asarray(_segments("packed", 4, 30, None))

    def loss(impl):
        def f(q, k, v):
            out = attn.attention(q, k, v, segment_ids=seg, causal=True, impl=impl)
            return (out * cot).sum()

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    with jax.set_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(loss("pallas_gpu"))(q, k, v))
        ours = loss("pallas_gpu")(q, k, v)
    ref = loss("xla")(q, k, v)
    assert "shard_map" in jaxpr and "pallas_call" in jaxpr
    for a, r in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, r, atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_model_dir(hf_model_dir):
    return hf_model_dir("tied")[1]  # GQA 4/2, windows of 4x4 merged tokens


def _batch():
    """Two right-padded rows, per-frame images with windows that split each frame."""
    grids = np.array([[1, 10, 14], [1, 10, 14]])
    row = [5, 6] + sum((vision_block(g) for g in grids), []) + [7, 8, 9]
    ids = np.zeros((2, len(row) + 7), np.int64)  # even: cuDNN's training kernels
    mask = np.zeros_like(ids)
    ids[0, : len(row)], mask[0, : len(row)] = row, 1
    ids[1, :5], mask[1, :5] = [5, 6, 7, 8, 9], 1
    n_img = int((ids[0] == IMAGE).sum())
    assert n_img == int(grids.prod(-1).sum()) // 4
    return ids, mask, dict(pixel_values=pixels(grids, seed=7), image_grid_thw=grids)


def _logits(model_dir, impl: str, compute_dtype: str = "float32") -> np.ndarray:
    ids, mask, media = _batch()
    model = tempura_jax.load_pretrained(
        model_dir, dtype="float32", compute_dtype=compute_dtype, attention_impl=impl
    )
    return np.asarray(model(ids, attention_mask=mask, **media).logits.astype(jnp.float32))


@pytest.mark.parametrize("impl", ["pallas_gpu", "splash"])
def test_full_model_logits_equal_xla(tiny_model_dir, impl):
    real = _batch()[1].astype(bool)
    ours, ref = _logits(tiny_model_dir, impl)[real], _logits(tiny_model_dir, "xla")[real]
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 and np.abs(ref).max() > 1.0, err


@pytest.fixture
def simulated_gpu(monkeypatch):
    """The dispatcher believes it runs on a GPU. cuDNN's call keeps the adapter
    (lengths from the right-padded ids, causal flag, GQA layout) but runs through
    `jax.nn.dot_product_attention`'s XLA path; the Pallas kernel runs interpreted.
    Returns the backend names chosen, one per attention call traced."""
    chosen = []
    select = attn.select

    def recording_select(impl, case):
        choice = select(impl, case)
        chosen.append(choice[0].name)
        return choice

    pallas = attn.BACKENDS["pallas_gpu"]

    def interpreted(*args, interpret, **kwargs):
        return pallas.run(*args, interpret=True, **kwargs)

    monkeypatch.setattr(attn, "platform", lambda: "gpu")
    monkeypatch.setattr(attn, "select", recording_select)
    through_xla = partial(cudnn_attention, implementation="xla")
    monkeypatch.setattr(attn.cudnn, "cudnn_attention", through_xla)
    monkeypatch.setitem(attn.BACKENDS, "pallas_gpu", dataclasses.replace(pallas, run=interpreted))
    jax.clear_caches()  # retrace: the model's jit must see the patched dispatcher
    yield chosen
    jax.clear_caches()


# Vision tower (4 blocks: windows and full-frame segments), then the decoder (2 layers).
ON_GPU = {"cudnn": ["xla"] * 4 + ["cudnn"] * 2, "auto": ["pallas_gpu"] * 4 + ["cudnn"] * 2}


@pytest.mark.parametrize("impl", list(ON_GPU))
def test_full_model_logits_on_a_simulated_gpu(tiny_model_dir, impl, simulated_gpu):
    """bfloat16, as on a GPU (cuDNN takes no float32): the backends `impl`
    resolves to there give the XLA reference's logits within bfloat16 rounding
    (the Pallas kernel's accumulation order costs ~1.5% of the largest logit; a
    wrong length, causal flag or segment mask costs 15-50%)."""
    real = _batch()[1].astype(bool)
    ref = _logits(tiny_model_dir, "xla", "bfloat16")[real]
    simulated_gpu.clear()
    ours = _logits(tiny_model_dir, impl, "bfloat16")[real]
    assert simulated_gpu == ON_GPU[impl]
    err = np.abs(ours - ref).max()
    assert err <= 0.03 * np.abs(ref).max() and np.abs(ref).max() > 1.0, err


def test_full_model_gradients_equal_xla(tiny_model_dir):
    """Training path: parameter gradients through the vision tower and decoder."""
    from flax import nnx

    ids, mask, media = _batch()
    grads = {}
    for name in ("xla", "pallas_gpu"):
        model = tempura_jax.load_pretrained(
            tiny_model_dir, dtype="float32", compute_dtype="float32", attention_impl=name
        )
        inputs = tempura_jax.prepare_inputs(model.config, ids, mask, **media)
        inputs = jax.tree.map(jnp.asarray, inputs)
        graphdef, params = nnx.split(model)

        def loss(p, inputs=inputs, graphdef=graphdef):
            m = nnx.merge(graphdef, p)
            hidden = m.forward(inputs)
            return (m.logits(hidden) * jnp.asarray(mask)[..., None]).std()

        grads[name] = jax.grad(loss)(params)
    flat = {k: jax.tree.leaves(v) for k, v in grads.items()}
    for a, r in zip(flat["pallas_gpu"], flat["xla"], strict=True):
        np.testing.assert_allclose(a, r, atol=2e-5, rtol=2e-4)
    assert max(float(jnp.abs(r).max()) for r in flat["xla"]) > 1e-3
