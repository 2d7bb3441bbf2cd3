"""Ahead-of-time compiles for a TPU slice this machine does not have
(libtpu's compile-only client): the trainer's step with real Mosaic splash
kernels, the report, the attention dispatcher's platform and the one-line
errors."""

import importlib.util
import json

import jax
import numpy as np
import pytest

from tempura_jax.aot import cli, report
from tempura_jax.aot.topologies import TARGETS, devices, target

tpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='libtpu not installed (pip "jax[tpu]")'
)

# The demo config with the tiny model, 4 rows over v5e-4's 4 chips (one
# program, no accumulation), 56x56 frames: 4 of them fill 64 patches.
TINY = ["--config", "demo", "--model", "tiny", "--shape", "128,64", "--frame", "56x56"]
ONE_STEP = ["batch.global_size=8", "batch.per_device=2"]


@pytest.fixture(scope="module")
def splash_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "v5e.json"
    argv = [*TINY, "--topology", "v5e-4", "--out", str(out), "model.attention_impl=splash"]
    rc = cli.main([*argv, *ONE_STEP])
    return rc, json.loads(out.read_text())


@tpu
def test_splash_step_compiles_for_v5e_and_reports(splash_run):
    rc, r = splash_run
    assert rc == 0 and r["fits"]
    assert r["topology"] == "v5e-4" and r["devices"] == 4
    assert r["device_kind"].startswith("TPU v5")
    assert int(np.prod(list(r["mesh"].values()))) == 4
    assert r["shape"] == {"rows": 8, "seq": 128, "patches": 64, "frame": [56, 56]}
    assert r["attention_impl"] == "splash" and r["dtypes"]["compute"] == "bfloat16"
    assert [p["name"] for p in r["programs"]] == ["step"]
    m = r["memory"]
    assert set(m) == {"arguments", "temporaries", "outputs", "held", "peak"}
    assert m["held"] == 0  # one program takes the whole training state
    assert 0 < m["arguments"] < m["peak"] and m["temporaries"] > 0
    assert r["hbm_bytes"] == 16 * 2**30 and r["margin_bytes"] == r["hbm_bytes"] - m["peak"]
    assert r["compile_seconds"] > 0
    # XLA counts remat, padding and the optimiser too: same order as the model's.
    assert 0.3 < r["xla_flops"] / r["model_flops"] < 5


@tpu
def test_a_step_that_does_not_fit_exits_2_with_the_numbers(tmp_path, capsys):
    """32k tokens of dense xla attention: the TPU compiler refuses the program
    (RESOURCE_EXHAUSTED); that is the measured "does not fit"."""
    out = tmp_path / "oom.json"
    argv = ["--config", "demo", "--model", "tiny", "--shape", "32768,64", "--frame", "56x56"]
    assert cli.main([*argv, "--topology", "v5e-4", "--out", str(out), *ONE_STEP]) == 2
    r = json.loads(out.read_text())
    assert not r["fits"] and "RESOURCE_EXHAUSTED" in r["compile_error"]
    assert r["memory"]["temporaries"] > r["hbm_bytes"] and r["margin_bytes"] < 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_out_of_memory_reads_both_forms_of_the_tpu_compiler_s_message():
    """libtpu words a refusal two ways; the peak adds the state the program does
    not take (the optimiser state while `accumulate` runs)."""
    from tempura_jax.aot.compile import out_of_memory

    temps = "RESOURCE_EXHAUSTED: the total memory required for HLO temporaries (33.24G) exceeds"
    m = out_of_memory(temps, held_bytes=5)
    assert m["temporaries"] == int(33.24 * 2**30) and m["peak"] == m["temporaries"] + 5
    used = "RESOURCE_EXHAUSTED: E1000: ... hbm. Used 15.89G of 15.75G hbm. Exceeded hbm by 147.54M."
    m = out_of_memory(used, held_bytes=2**30)
    assert m["temporaries"] is None and m["peak"] == int(15.89 * 2**30) + 2**30
    assert out_of_memory("RESOURCE_EXHAUSTED: something else")["peak"] is None


@tpu
def test_refit_judges_the_same_compile_against_less_memory(splash_run):
    _, r = splash_run
    tight = report.refit(r, r["memory"]["peak"] - 1)
    assert not tight["fits"] and tight["margin_bytes"] == -1
    assert cli.exit_status(tight) == cli.EXIT_DOES_NOT_FIT == 2
    assert "DOES NOT FIT" in report.text(tight) and "FITS" in report.text(r)


@tpu
def test_auto_on_tpu_lowers_to_the_splash_program():
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot.compile import lower_train
    from tempura_jax.config import tiny

    texts = {}
    for impl in ("auto", "splash"):
        cfg = overrides.apply(
            configs.get("demo").get_config(1), [f"model.attention_impl={impl}", *ONE_STEP]
        )
        lo = lower_train(cfg, tiny(), target("v5e-4"), 128, 64, (56, 56))
        texts[impl] = lo.programs[0][2].as_text()
    assert texts["auto"].count("tpu_custom_call") >= 3  # decoder, windows, frames
    assert texts["auto"] == texts["splash"]


@tpu
def test_a_packed_run_compiles_its_row_shape_with_the_decoder_s_bound():
    """data.packing: the compile is for the run's one row shape, the decoder
    attends within its samples (`text_bound`: splash takes the band) and model
    FLOPs count each sample's own causal attention, not the row's."""
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot.batch import largest
    from tempura_jax.aot.compile import lower_train
    from tempura_jax.config import tiny
    from tempura_jax.train.step import text_bound

    packed = ["data.packing=true", "data.max_seq_len=128", "data.pack_seq_len=512"]
    packed.append("model.attention_impl=auto")
    cfg = overrides.apply(configs.get("demo").get_config(1), [*packed, *ONE_STEP])
    assert largest(cfg.data) == (512, 2048) and text_bound(cfg.data) == 128
    lo = lower_train(cfg, tiny(), target("v5e-4"), 512, 2048, (56, 56))
    one = overrides.apply(cfg, ["data.max_seq_len=512"])  # one sample fills the row
    assert text_bound(one.data) is None
    whole = lower_train(one, tiny(), target("v5e-4"), 512, 2048, (56, 56))
    t = tiny().text
    # Four causal samples of 128 instead of one of 512: 3 x 128 x 512 fewer score pairs,
    # 2 (QK, AV) x 2 flops x heads x head_dim each, forward + backward (x3), every layer.
    saved = 3 * 128 * 512 / 2 * 4 * t.num_attention_heads * t.head_dim * 3 * t.num_hidden_layers
    per_device = lo.shape.rows / 4
    assert whole.model_flops - lo.model_flops == pytest.approx(saved * per_device, rel=1e-9)
    text = lo.programs[0][2].as_text()
    assert text.count("tpu_custom_call") >= 3 and text != whole.programs[0][2].as_text()


@tpu
def test_accumulation_lowers_accumulate_and_apply_and_counts_the_held_state():
    """With accumulation the optimiser state stays in HBM while `accumulate`
    runs without it: counted in that program's peak."""
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot.compile import held, lower_train
    from tempura_jax.config import tiny

    cfg = overrides.apply(configs.get("demo").get_config(1), ["batch.global_size=16"])
    lo = lower_train(cfg, tiny(), target("v5e-4"), 128, 64, (56, 56))
    assert [(name, runs) for name, runs, *_ in lo.programs] == [("accumulate", 2), ("apply", 1)]
    # AdamW's two fp32 moments of every trainable parameter, replicated (fsdp 1).
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lo.programs[0][2].args_info[0][0]))
    assert lo.programs[0][3] >= 2 * 4 * params > 0
    assert held(()) == 0


@tpu
def test_the_tpu_compiler_plans_into_the_hbm_the_held_state_leaves():
    """`accumulate` is compiled into the chip's HBM less the optimiser state
    that stays beside it: with only 1 MiB left, the compiler refuses it."""
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot.compile import compile_train
    from tempura_jax.config import tiny

    cfg = overrides.apply(configs.get("demo").get_config(1), ["batch.global_size=16"])
    t = target("v5e-4")
    ok = compile_train(cfg, tiny(), t, 128, 64, (56, 56))
    acc = ok.programs[0]
    assert acc.error is None and acc.hbm_limit == t.hbm_bytes - acc.memory["held"]
    tight = acc.memory["held"] + 2**20
    refused = compile_train(cfg, tiny(), t, 128, 64, (56, 56), hbm_bytes=tight).programs[0]
    assert refused.hbm_limit == 2**20 and "RESOURCE_EXHAUSTED" in refused.error


@tpu
@pytest.mark.parametrize("overshoots", [1, 99])
def test_an_overshoot_of_the_limit_is_compiled_again_tighter(monkeypatch, overshoots):
    """The compiler's plan may exceed its limit (3B on v6e-8: by 0.6 GiB): the
    program is compiled again with the limit lowered by the overshoot and 1%,
    at most REPLANS times. Here the first `overshoots` real plans are made to
    read 1 MiB over the chip."""
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot import compile as aot
    from tempura_jax.config import tiny

    cfg = overrides.apply(configs.get("demo").get_config(1), ["batch.global_size=16"])
    t = target("v5e-4")
    real, caps = aot.Program.compile.__func__, []

    def compile_(cls, name, runs, lowered, held_bytes=0, devices=1, hbm_limit=None):
        p = real(cls, name, runs, lowered, held_bytes, devices, hbm_limit)
        if name == "accumulate":
            caps.append(hbm_limit)
            if len(caps) <= overshoots:
                p.memory["peak"] = t.hbm_bytes + 2**20
        return p

    monkeypatch.setattr(aot.Program, "compile", classmethod(compile_))
    acc = aot.compile_train(cfg, tiny(), t, 128, 64, (56, 56)).programs[0]
    first = t.hbm_bytes - acc.memory["held"]
    assert caps[:2] == [first, int(first - 2**20 - first // 100)]
    assert acc.replans == len(caps) - 1 == min(overshoots, aot.REPLANS)
    assert acc.hbm_limit == caps[-1] and (acc.memory["peak"] > t.hbm_bytes) == (overshoots > 2)


@tpu
def test_dispatcher_platform_is_the_mesh_s():
    from jax.sharding import Mesh

    from tempura_jax.ops import attention

    tpu = Mesh(np.array(devices(TARGETS["v5e-4"])).reshape(1, 4, 1), ("data", "fsdp", "tensor"))
    cpu = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    assert attention.platform() == jax.default_backend() == "cpu"
    with jax.set_mesh(tpu):
        assert attention.platform() == "tpu"
    with jax.set_mesh(cpu):
        assert attention.platform() == "cpu"


@tpu
def test_unknown_topology_lists_the_known_ones(capsys):
    assert cli.main([*TINY, "--topology", "v9z-8"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown topology 'v9z-8'" in err and "v5e-8" in err and "h100-8" in err


@tpu
def test_mesh_shape_not_matching_the_devices_names_both(capsys):
    argv = [*TINY, "--topology", "v5e-4", "mesh.shape=1,3,1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "mesh.shape (1, 3, 1)" in err and "v5e-4" in err and "4 devices" in err


@tpu
def test_generate_compiles_prefill_and_decode_for_v5e(tmp_path, capsys):
    out = tmp_path / "gen.json"
    argv = [*TINY, "--topology", "v5e-4", "--what", "generate", "--new-tokens", "4"]
    assert cli.main([*argv, "--batch", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["what"] == "generate" and [p["name"] for p in r["programs"]] == ["generate"]
    assert r["shape"]["rows"] == 4 and r["dtypes"]["param"] == "bfloat16"
    assert r["memory"]["peak"] > r["memory"]["arguments"] > 0 and r["fits"]
    assert "generate for v5e-4" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins") is None
    or importlib.util.find_spec("jax_plugins.xla_cuda13") is None,
    reason='the CUDA plugin is not installed (pip install -e ".[aot-gpu]", 4.4 GB)',
)
def test_auto_step_compiles_for_h100_with_cudnn_and_pallas(tmp_path):
    """Deviceless CUDA: cuDNN attention for the decoder, the Pallas (Triton)
    kernel for the vision tower, through XLA's GPU compiler for sm_90."""
    out = tmp_path / "h100.json"
    argv = ["--config", "demo", "--model", "tiny", "--shape", "256,1024", "--frame", "196x336"]
    rc = cli.main(
        [
            *argv,
            "--topology",
            "h100-1",
            "--out",
            str(out),
            "batch.global_size=2",
            "model.attention_impl=auto",
        ]
    )
    r = json.loads(out.read_text())
    assert rc == 0 and r["fits"] and r["device_kind"] == "NVIDIA H100 80GB HBM3"
    kernels = r["programs"][0]["kernels"]
    assert any("cudnn" in k for k in kernels), kernels
    assert any("triton" in k for k in kernels), kernels
    assert r["memory"]["peak"] > r["memory"]["arguments"] > 0 and r["model_flops"] > 0
