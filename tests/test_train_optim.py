"""Parameter groups, per-group schedules, weight-decay mask and freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tempura_jax.config import tiny
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL
from tempura_jax.train.optim import (
    OptimConfig,
    decays,
    group_of,
    make_optimizer,
    schedules,
    trainable_filter,
)


def model():
    return Qwen2_5_VL(tiny(), rngs=nnx.Rngs(0))


def flat(m, filt=nnx.Param):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(m, filt))}


def test_groups_and_decay():
    params = flat(model())
    groups = {k: group_of(k) for k in params}
    assert groups[("visual", "patch_embed", "kernel")] == "vision"
    assert groups[("visual", "blocks", 0, "attn", "qkv", "kernel")] == "vision"
    assert groups[("visual", "merger", "fc1", "kernel")] == "merger"
    assert groups[("visual", "merger", "ln_q", "scale")] == "merger"
    assert groups[("model", "embed_tokens")] == "llm"
    assert set(groups.values()) == {"vision", "merger", "llm"}
    assert not decays(("model", "norm", "scale")) and not decays(
        ("visual", "merger", "fc1", "bias")
    )
    assert decays(("model", "layers", 0, "mlp", "up_proj", "kernel"))


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig()
    s = schedules(cfg, total_steps=100)
    warm = round(0.03 * 100)
    for g, peak in (("vision", 2e-6), ("merger", 1e-5), ("llm", 1e-5)):
        assert float(s[g](0)) == 0.0
        np.testing.assert_allclose(float(s[g](warm)), peak, rtol=1e-6)
        mid = (warm + 100) / 2
        np.testing.assert_allclose(float(s[g](mid)), peak / 2, rtol=1e-3)
        assert float(s[g](100)) == pytest.approx(0.0, abs=1e-12)


@nnx.jit
def step(m, opt):
    def loss(m):  # gradient 1 for every parameter
        return sum(jnp.sum(p) for p in jax.tree.leaves(nnx.state(m, nnx.Param)))

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, opt.wrt))(m)
    opt.update(m, grads)


def test_per_group_learning_rates_follow_schedule():
    """With Adam, the first updates of a parameter move it by about the
    learning rate (|m / sqrt(v)| = 1): read each group's rate back."""
    cfg = OptimConfig(weight_decay=0.0, warmup_ratio=0.5, max_grad_norm=1e9)
    m = model()
    zeros = jax.tree.map(jnp.zeros_like, nnx.state(m, nnx.Param))
    nnx.update(m, zeros)  # near 0, float32 resolves the tiny steps exactly
    opt = make_optimizer(m, cfg, total_steps=4)
    s = schedules(cfg, 4)
    keys = {
        "vision": ("visual", "blocks", 0, "norm1", "scale"),
        "merger": ("visual", "merger", "ln_q", "scale"),
        "llm": ("model", "norm", "scale"),
    }
    for t in range(3):
        before = flat(m)
        step(m, opt)
        after = flat(m)
        for g, k in keys.items():
            moved = before[k] - after[k]  # Adam's first steps: lr * m / sqrt(v) = lr
            np.testing.assert_allclose(moved, float(s[g](t)), rtol=1e-4, atol=1e-14)


def test_frozen_parameters_untouched_and_stateless():
    cfg = OptimConfig(freeze_vision_tower=True, tune_merger=False)
    m = model()
    before = flat(m)
    opt = make_optimizer(m, cfg, total_steps=10)
    owned = {k for k, _ in nnx.to_flat_state(nnx.state(m, trainable_filter(cfg)))}
    assert owned and all(k[0] == "model" for k in owned)
    opt_leaves = [k for k, _ in nnx.to_flat_state(nnx.state(opt))]
    assert any("model" in k for k in opt_leaves)
    assert not any("visual" in k for k in opt_leaves)  # no Adam moments for frozen weights
    for _ in range(2):
        step(m, opt)
    after = flat(m)
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == (k[0] == "visual"), k
    with pytest.raises(ValueError, match="frozen"):
        make_optimizer(
            model(), OptimConfig(freeze_vision_tower=True, freeze_llm=True, tune_merger=False), 10
        )
