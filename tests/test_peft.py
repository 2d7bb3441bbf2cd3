"""LoRA, QLoRA and DoRA: PEFT parity of exported adapters (torch, CPU, fp32),
merging, training with a frozen base, adapter-only checkpoints, exact resume,
the converters and config errors."""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train
import torch
from conftest import pixels, vision_block
from test_train import config, finish, launch, metrics, run_args, wait_for_step

import tempura_jax
from converters.cli import main as convert_main
from tempura_jax import checkpoint, peft
from tempura_jax.io.hf_checkpoint import hub_name
from tempura_jax.params import param_table
from tempura_jax.peft import hf_format
from tempura_jax.peft.config import PeftConfigError
from tempura_jax.train.trainer import Trainer

# The training tests' session fixtures (tiny HF checkpoint, demo data).
train_data, tiny_init = test_train.train_data, test_train.tiny_init

TOL = 1e-4
GRID = [1, 10, 14]


def inputs(cfg=None):
    """Text around one image, in the token ids of `cfg` (default: conftest's)."""
    block = vision_block(GRID)
    if cfg is not None:
        n = len(block) - 2
        block = [cfg.vision_start_token_id, *[cfg.image_token_id] * n, cfg.vision_end_token_id]
    ids = np.array([[5, 6, *block, 7, 8, 9, 10]])
    return ids, pixels([GRID], seed=3), np.array([GRID])


def ours(model):
    ids, px, grid = inputs(model.config)
    return np.asarray(model(ids, pixel_values=px, image_grid_thw=grid).logits)


def peft_logits(base_dir, adapter_dir, state=None, cfg=None):
    import peft as hf_peft
    from transformers import Qwen2_5_VLForConditionalGeneration

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir).eval()
    if state is not None:  # QLoRA: our dequantised kernels as the HF base
        sd = base.state_dict()
        base.load_state_dict({k: torch.as_tensor(state.get(hub_name(k), v)) for k, v in sd.items()})
    model = base if adapter_dir is None else hf_peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    ids, px, grid = inputs(cfg)
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids),
            pixel_values=torch.as_tensor(px),
            image_grid_thw=torch.as_tensor(grid),
        )
    return out.logits.numpy()


def dequantised(model) -> dict[str, np.ndarray]:
    out = {}
    for spec in param_table(model.config):
        node = model
        for k in spec.path[:-1]:
            node = node[k] if isinstance(k, int) else getattr(node, k)
        if spec.path[-1] == "kernel" and getattr(node, "qtype", None):
            out[spec.hf_name] = spec.to_hf(np.asarray(node.weight(jnp.float32)))
    return out


def trained_like(model, seed=0):
    """Adapters as after some training (B and m away from their start)."""
    for i, ad in enumerate(peft.adapters(model).values()):
        key = jax.random.key(seed + i)
        ad.lora_b.set_value(0.03 * jax.random.normal(key, ad.lora_b.shape))
        if ad.magnitude is not None:
            ad.magnitude.set_value(ad.magnitude[...] * 1.05)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_exported_adapter_matches_peft_and_merge(hf_model_dir, tmp_path, method):
    """Ours == PEFT on the HF model (QLoRA: on our dequantised base); the
    re-imported adapter and the merged model equal the adapter forward."""
    _, base_dir = hf_model_dir("tied")
    model = tempura_jax.load_pretrained(base_dir)
    cfg = peft.PeftConfig(method=method, rank=4, alpha=8, dropout=0.1, vision=True, bits=4)
    targets = peft.apply(model, cfg)
    assert any(t.startswith("visual.") for t in targets) and len(targets) == 4 * 5 + 2 * 7
    trained_like(model)
    got = ours(model)
    hf_format.export(model, cfg, tmp_path / "a", base_model=str(base_dir), with_merger=True)
    raw = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert raw["use_dora"] == (method == "dora") and raw["r"] == 4
    ref = peft_logits(base_dir, tmp_path / "a", dequantised(model) if method == "qlora" else None)
    assert np.abs(ref).max() > 1.0
    assert np.abs(got - ref).max() <= TOL, np.abs(got - ref).max()
    again = tempura_jax.load_pretrained(base_dir)
    hf_format.load(again, tmp_path / "a", method=method)
    np.testing.assert_array_equal(ours(again), got)
    peft.merge(model)
    assert not peft.adapters(model)
    assert np.abs(ours(model) - got).max() <= TOL


def test_dropout_is_off_outside_training(hf_model_dir):
    _, base_dir = hf_model_dir("tied")
    model = tempura_jax.load_pretrained(base_dir)
    peft.apply(model, peft.PeftConfig(method="lora", rank=4, alpha=8, dropout=0.5))
    trained_like(model)
    np.testing.assert_array_equal(ours(model), ours(model))
    from flax import nnx

    from tempura_jax.model.inputs import prepare_inputs

    @nnx.jit
    def training_forward(model, x):  # what the training step traces
        with peft.training_dropout({"input_ids": x.input_ids}):
            return model.logits(model.forward(x))

    ids, px, grid = inputs()
    x = prepare_inputs(model.config, ids, None, px, grid, None, None, None, None)
    dropped = np.asarray(training_forward(model, x))
    assert np.abs(dropped - ours(model)).max() > 1e-3
    np.testing.assert_array_equal(ours(model), ours(model))  # the context is gone again


def base_tensors(model) -> dict[str, np.ndarray]:
    """Every frozen base array (float kernels, quantised values and scales)."""
    state = nnx_state(model)
    return {k: v for k, v in state.items() if "adapter" not in k and "merger" not in k}


def nnx_state(model) -> dict[str, np.ndarray]:
    from flax import nnx

    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Variable))
    }


TRAIN_ARGS = ("max_steps=3", "optim.llm_lr=2e-3", "optim.warmup_ratio=0", "peft.rank=4")


@pytest.mark.parametrize(
    "method,extra",
    [("dora", ()), ("qlora", ("peft.bits=4",)), ("qlora", ("peft.bits=8",))],
    ids=["dora", "qlora-nf4", "qlora-int8"],
)
def test_training_moves_adapters_only(train_data, tiny_init, tmp_path, method, extra):
    cfg = config(train_data, tiny_init, tmp_path, *TRAIN_ARGS, f"peft.method={method}", *extra)
    out = Trainer(cfg, devices=jax.devices()[:1]).run()
    assert out.losses[-1] < out.losses[0], out.losses
    after = tempura_jax.load_pretrained(tmp_path / "checkpoints")
    before = tempura_jax.load_pretrained(tiny_init)
    peft.apply(before, cfg.peft, list(peft.adapters(after)))
    b, a = base_tensors(before), base_tensors(after)
    assert b.keys() == a.keys()
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    if method == "qlora":
        q = after.model.layers[0].self_attn.q_proj
        assert q.qtype == {4: "nf4", 8: "int8"}[cfg.peft.bits]
    # The checkpoint holds the adapters and the merger only.
    saved = checkpoint.OrbaxParams(tmp_path / "checkpoints").specs
    assert all("adapter" in "/".join(k) or "merger" in k for k in saved)
    assert any("merger" in k for k in saved)


def test_lora_run_resumes_exactly_and_exports(train_data, tiny_init, tmp_path_factory):
    """LoRA: loss falls, base untouched, SIGKILL + resume bit-identical, to-peft
    loads in PEFT, to-hf --merge-adapters equals the adapter forward, stage 2
    continues or merges the stage-1 adapters."""
    ref_dir, run_dir = tmp_path_factory.mktemp("ref"), tmp_path_factory.mktemp("run")
    args = ("max_steps=4", "checkpoint.every=2", "peft.method=lora", "peft.rank=4")
    args = (*args, "optim.llm_lr=2e-3", "optim.warmup_ratio=0", "peft.vision=true")
    finish(launch(run_args(train_data, tiny_init, ref_dir, *args)))
    ref = metrics(ref_dir)
    assert ref[4]["loss"] < ref[1]["loss"]

    proc = launch(run_args(train_data, tiny_init, run_dir, *args))
    wait_for_step(proc, run_dir, 3, checkpoint=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = finish(launch(run_args(train_data, tiny_init, run_dir, *args)))
    assert "resuming at step" in out
    got = metrics(run_dir)
    for step in ref:
        assert got[step]["loss"] == ref[step]["loss"], step
        assert got[step]["grad_norm"] == ref[step]["grad_norm"], step

    run = run_dir / "checkpoints"
    model = tempura_jax.load_pretrained(run)
    base = tempura_jax.load_pretrained(tiny_init)
    k = model.model.layers[1].mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(k, base.model.layers[1].mlp.up_proj.kernel[...])
    got_logits = ours(model)
    exp = tmp_path_factory.mktemp("exp")
    assert convert_main(["to-peft", str(run), str(exp / "peft")]) == 0
    ref_logits = peft_logits(tiny_init, exp / "peft", cfg=model.config)
    # This random checkpoint's logits reach ~40: the base alone differs from
    # HF by ~1e-4 in fp32; the adapters must add nothing beyond that.
    base_err = np.abs(ours(base) - peft_logits(tiny_init, None, cfg=model.config)).max()
    assert np.abs(got_logits - ref_logits).max() <= max(TOL, 1.5 * base_err)
    assert convert_main(["to-hf", str(run), str(exp / "hf")]) == 2  # needs --merge-adapters
    assert convert_main(["to-hf", str(run), str(exp / "hf"), "--merge-adapters"]) == 0
    merged = tempura_jax.load_pretrained(exp / "hf")
    assert not peft.adapters(merged)
    assert np.abs(ours(merged) - got_logits).max() <= TOL
    # A PEFT directory loads through load_pretrained (on its recorded base).
    np.testing.assert_array_equal(ours(tempura_jax.load_pretrained(exp / "peft")), got_logits)

    # Stage 2 from the stage-1 adapter run: merged (new adapters on the merged
    # base), or continued (one step, then loaded back through the record chain).
    wd = tmp_path_factory.mktemp("merge")
    cfg = config(train_data, run, wd, "peft.method=lora", "peft.rank=4", "peft.from_run=merge")
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    trainer._build()
    assert trainer.peft_record["base"] == {"path": str(run), "merge_adapters": True}
    wd = tmp_path_factory.mktemp("continue")
    cfg = config(train_data, run, wd, "max_steps=1", "peft.method=lora", "peft.rank=4")
    Trainer(cfg, devices=jax.devices()[:1]).run()
    rec = checkpoint.OrbaxParams(wd / "checkpoints").record["peft"]
    assert rec["base"]["path"] == str(tiny_init.absolute())
    stage2 = tempura_jax.load_pretrained(wd / "checkpoints")
    assert set(peft.adapters(stage2)) == set(peft.adapters(model))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("peft.method=lora", "peft.targets=q_projj"), "unknown module name"),
        (("peft.method=lora", "peft.targets=visual.*"), "matches no adaptable"),
        (("peft.method=lora", "peft.rank=0"), "peft.rank must be > 0"),
        (("peft.method=qlora", "peft.bits=3"), "peft.bits must be 4 or 8"),
        (("peft.method=lora", "optim.freeze_llm=true"), "not supported"),
        (
            ("peft.method=lora", "peft.vision=true", "optim.freeze_vision_tower=true"),
            "not supported",
        ),
        (("peft.method=lorra",), "peft.method must be one of"),
    ],
)
def test_bad_config_is_a_one_line_error(train_data, tiny_init, tmp_path, overrides, message):
    cfg = config(train_data, tiny_init, tmp_path, *overrides)
    with pytest.raises(PeftConfigError) as e:
        # Validation happens before a step compiles: _build resolves the targets.
        Trainer(cfg, devices=jax.devices()[:1])._build()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dense_takes_qwix_lora_and_qlora():
    """Our Dense is qwix-compatible (kernel the second operand, no cast of an
    fp32 kernel): qwix's LoRA equals our adapter with the same A and B, and
    its QLoRA runs."""
    import qwix
    from flax import nnx

    from tempura_jax.model.layers import Dense

    class One(nnx.Module):
        def __init__(self):
            axes = ("embed", "heads", "head_dim")
            self.q = Dense((8,), (2, 4), axes, bias=True, param_dtype="float32", rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.q(x)

    x = jax.random.normal(jax.random.key(1), (3, 8))
    rule = qwix.LoraRule(module_path=".*", rank=2, alpha=4.0)
    theirs = qwix.apply_lora_to_model(One(), qwix.LoraProvider([rule]), x, rngs=nnx.Rngs(1))
    mine = One()
    ad = peft.Adapter(mine.q, peft.PeftConfig(method="lora", rank=2, alpha=4.0), jax.random.key(2))
    ad.lora_b.set_value(jax.random.normal(jax.random.key(3), ad.lora_b.shape))
    mine.q.adapter = nnx.data(ad)
    theirs.q.kernel_lora_a.set_value(ad.lora_a[...].reshape(8, 2))
    theirs.q.kernel_lora_b.set_value(ad.lora_b[...].reshape(2, 8))
    np.testing.assert_allclose(theirs(x), mine(x), atol=1e-5)
    assert np.abs(mine(x) - One()(x)).max() > 1e-2
    rule = qwix.LoraRule(module_path=".*", rank=2, alpha=4.0, weight_qtype="nf4", tile_size=4)
    q = qwix.apply_lora_to_model(One(), qwix.LoraProvider([rule]), x, rngs=nnx.Rngs(1))
    assert 0 < np.abs(q(x) - One()(x)).max() < 0.1
