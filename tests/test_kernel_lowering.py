"""The GPU and TPU kernels lower natively, checked here without the hardware.

`jax.export` lowers for a platform the machine does not have. With the
dispatcher told it runs there, the Pallas kernels lower through Triton (CUDA)
and Mosaic (TPU) instead of interpret mode, so these tests catch what interpret
mode cannot: ops without a Triton or Mosaic lowering, block shapes the
lowering rejects, and the kernels reaching every attention site of the
training graph of the real 3B model. cuDNN attention lowers too once JAX's
two hardware probes are answered; that is how its even-length rule was found.
Compiling the kernel IR to device code still needs the device
(bench/attention.py).
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

import tempura_jax
from tempura_jax.config import qwen2_5_vl_3b, tiny
from tempura_jax.loading import abstract_model
from tempura_jax.ops import attention as attn

NATIVE = {
    # impl: (export platform, dispatcher platform, custom call target)
    "pallas_gpu": ("cuda", "gpu", "__gpu$xla.gpu.triton"),
    "splash": ("tpu", "tpu", "tpu_custom_call"),
}
CUDNN = ("__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward")
TARGETS = (*(t for _, _, t in NATIVE.values()), *CUDNN)
CHECKS = [export.DisabledSafetyCheck.custom_call(t) for t in TARGETS]


def lower(fn, impl, *args) -> str:
    platform = NATIVE[impl][0]
    exported = export.export(jax.jit(fn), platforms=[platform], disabled_checks=CHECKS)(*args)
    return exported.mlir_module()


def custom_calls(module: str) -> collections.Counter:
    return collections.Counter(re.findall(r"custom_call @([\w$.]+)", module))


@pytest.fixture
def on_platform(monkeypatch):
    """Tells the dispatcher it runs on impl's platform; returns the list of
    (backend, interpret) it chooses, one per attention call traced."""
    chosen = []
    select = attn.select

    def recording_select(impl, case):
        chosen.append(select(impl, case))
        return chosen[-1]

    def set_platform(impl):
        monkeypatch.setattr(attn, "platform", lambda: NATIVE[impl][1])
        monkeypatch.setattr(attn, "select", recording_select)
        return chosen

    return set_platform


@pytest.fixture
def cudnn_probes(monkeypatch):
    """JAX asks the CUDA runtime for the cuDNN version and the compute
    capability when it lowers cuDNN attention: answer as an H100 with cuDNN
    9.1 would (skipped on a JAX whose probes are named otherwise)."""
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    for name in ("check_cudnn_version", "check_compute_capability"):
        if not hasattr(fused, name):
            pytest.skip(f"this JAX has no {name} to answer")
    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fused, "check_compute_capability", lambda capability: True)


def spec(shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype)


SHAPES = [
    # (name, S, Hq, Hkv, D, causal): 3B decoder and vision heads, odd lengths (padded)
    ("decoder", 999, 16, 2, 128, True),
    ("vision", 901, 16, 16, 80, False),
]


@pytest.mark.parametrize("impl", list(NATIVE))
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_kernel_forward_and_backward_lower_natively(impl, shape, on_platform):
    _, s, hq, hkv, d, causal = shape
    chosen = on_platform(impl)

    def loss(q, k, v, seg):
        out = attn.attention(q, k, v, segment_ids=seg, causal=causal, impl=impl)
        return out.astype(jnp.float32).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2))
    module = lower(grads, impl, spec((2, s, hq, d)), spec((2, s, hkv, d)), spec((2, s, hkv, d)),
                   spec((2, s), jnp.int32))  # fmt: skip
    calls = custom_calls(module)
    # Forward (with the softmax statistics), dq, and dk/dv: three kernels.
    assert calls[NATIVE[impl][2]] == 3, calls
    assert [(b.name, interpret) for b, interpret in chosen] == [(impl, False)]


@pytest.mark.parametrize("impl", list(NATIVE))
def test_kernel_under_a_mesh_lowers_natively(impl, on_platform):
    """Under a (data, fsdp, tensor) mesh the kernel runs per device in a
    shard_map; the 8-device program still holds the three native kernels."""
    from tempura_jax.sharding import make_mesh

    chosen = on_platform(impl)

    def loss(q, k, v, seg):
        out = attn.attention(q, k, v, segment_ids=seg, causal=True, impl=impl)
        return out.astype(jnp.float32).sum()

    args = spec((4, 256, 8, 128)), spec((4, 256, 2, 128)), spec((4, 256, 2, 128))
    with jax.set_mesh(make_mesh((2, 2, 2))):
        platform = NATIVE[impl][0]
        exported = export.export(
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=[platform], disabled_checks=CHECKS
        )(*args, spec((4, 256), jnp.int32))
    assert exported.nr_devices == 8
    assert custom_calls(exported.mlir_module())[NATIVE[impl][2]] == 3
    assert [(b.name, interpret) for b, interpret in chosen] == [(impl, False)]


@pytest.mark.parametrize("impl", list(NATIVE))
@pytest.mark.parametrize("preset", ["tiny", "3b"])
def test_model_gradient_lowers_with_kernels_everywhere(impl, preset, on_platform):
    """The training gradient of the whole model (abstract parameters: the 3B
    is never materialised): every vision block and decoder layer runs the
    native kernel, none falls back to the XLA reference."""
    chosen = on_platform(impl)
    cfg = model_config(preset, impl)
    module = lower_model_gradient(cfg, NATIVE[impl][0])
    sites = cfg.vision.depth + cfg.text.num_hidden_layers
    assert [(b.name, interpret) for b, interpret in chosen] == [(impl, False)] * sites
    calls = custom_calls(module)[NATIVE[impl][2]]
    # Pallas GPU kernels are inlined at each site (forward, dq, dk/dv); splash
    # kernels are jitted functions, lowered once per static mask: the vision
    # windows' band, the vision frames' and the decoder's causal mask.
    assert calls == 3 * (sites if impl == "pallas_gpu" else 3), calls


def test_auto_on_gpu_takes_cudnn_for_the_decoder_and_pallas_for_vision(cudnn_probes, on_platform):
    chosen = on_platform("pallas_gpu")
    cfg = model_config("3b", "auto")
    calls = custom_calls(lower_model_gradient(cfg, "cuda"))
    vision, decoder = cfg.vision.depth, cfg.text.num_hidden_layers
    picked = [b.name for b, _ in chosen]
    assert picked == ["pallas_gpu"] * vision + ["cudnn"] * decoder, picked
    assert calls[NATIVE["pallas_gpu"][2]] == 3 * vision
    assert [calls[t] for t in CUDNN] == [decoder, decoder], calls


def model_config(preset: str, impl: str):
    cfg = tiny() if preset == "tiny" else qwen2_5_vl_3b()
    return cfg.replace(attention_impl=impl, compute_dtype="bfloat16", param_dtype="bfloat16")


def lower_model_gradient(cfg, platform: str) -> str:
    """The parameter gradient of a mean-logit loss on one right-padded row
    with two 196x336 frames (windows split them), lowered for `platform`."""
    graphdef, params = nnx.split(abstract_model(cfg))
    grids = np.array([[1, 14, 24], [1, 14, 24]])
    per_frame = int(grids[0].prod()) // cfg.vision.spatial_merge_size**2
    frame = [cfg.vision_start_token_id] + [cfg.image_token_id] * per_frame
    row = [5, 6, *frame, cfg.vision_end_token_id, *frame, cfg.vision_end_token_id, 7, 8]
    ids = np.zeros((1, len(row) + 14), np.int64)  # even: a bucket length
    mask = np.zeros_like(ids)
    ids[0, : len(row)], mask[0, : len(row)] = row, 1
    pixels = np.zeros((int(grids.prod(-1).sum()), 1176), np.float32)
    inputs = tempura_jax.prepare_inputs(cfg, ids, mask, pixel_values=pixels, image_grid_thw=grids)
    inputs = jax.tree.map(lambda x: spec(np.shape(x), np.asarray(x).dtype), inputs)

    def loss(p, inputs):
        model = nnx.merge(graphdef, p)
        return model.logits(model.forward(inputs)).astype(jnp.float32).mean()

    exported = export.export(jax.jit(jax.grad(loss)), platforms=[platform], disabled_checks=CHECKS)
    return exported(params, inputs).mlir_module()


def test_cudnn_lowers_for_the_decoder(cudnn_probes, monkeypatch):
    """cuDNN flash: auto's first GPU choice for right-padded decoder rows."""
    monkeypatch.setattr(attn, "platform", lambda: "gpu")

    def loss(q, k, v, seg):
        out = attn.attention(q, k, v, segment_ids=seg, causal=True, impl="auto", right_padded=True)
        return out.astype(jnp.float32).sum()

    exported = export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["cuda"], disabled_checks=CHECKS
    )(spec((2, 1000, 16, 128)), spec((2, 1000, 2, 128)), spec((2, 1000, 2, 128)),
      spec((2, 1000), jnp.int32))  # fmt: skip
    calls = custom_calls(exported.mlir_module())
    assert [calls[t] for t in CUDNN] == [1, 1], calls


def test_pallas_gpu_float32_dots_lower_as_ieee(on_platform, monkeypatch):
    """Triton lowers float32 dots as TF32 unless told otherwise: the kernel's
    Triton modules carry no TF32 dot for float32 inputs (IEEE is the default,
    so the attribute is absent)."""
    reg = pytest.importorskip("jax._src.pallas.triton.pallas_call_registration")
    if not hasattr(getattr(reg, "lowering", None), "lower_jaxpr_to_triton_module"):
        pytest.skip("this JAX lowers Pallas Triton calls otherwise")
    modules = []
    lower_module = reg.lowering.lower_jaxpr_to_triton_module

    def recording(*args, **kwargs):
        result = lower_module(*args, **kwargs)
        modules.append(str(result.module))
        return result

    monkeypatch.setattr(reg.lowering, "lower_jaxpr_to_triton_module", recording)
    on_platform("pallas_gpu")

    def loss(q, k, v):
        return attn.attention(q, k, v, causal=True, impl="pallas_gpu").sum()

    x = spec((1, 128, 2, 64), jnp.float32)
    lower(jax.grad(loss, argnums=(0, 1, 2)), "pallas_gpu", x, x, x)
    dots = [line for m in modules for line in re.findall(r"tt\.dot [^\n]*", m)]
    assert len(dots) == 9 and all("xf32>" in d for d in dots), dots
    assert not [d for d in dots if "tf32" in d], dots
