"""tempura-convert: exact HF -> Orbax -> HF round trips, transformers loading
the export, training checkpoints, and every bad input leaving nothing behind."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_hf_model, pixels, vision_block

import tempura_jax
from converters.cli import main as convert_main

REPO = Path(__file__).resolve().parents[1]


def hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Read with the safetensors package (independent of our reader)."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(f, framework="pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def assert_same_tensors(a: Path, b: Path):
    ta, tb = hf_tensors(a), hf_tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert ta[name].shape == tb[name].shape, name
        assert (
            ta[name].contiguous().view(torch.uint8).equal(tb[name].contiguous().view(torch.uint8))
        ), name


def no_leftovers(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(
        str(directory / "tokenizer.json")
    )
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_round_trip_is_exact(tmp_path, variant, dtype, sharded):
    src = tmp_path / "src"
    build_hf_model(variant).to(dtype).save_pretrained(
        src, max_shard_size="60KB" if sharded else "5GB"
    )
    assert (src / "model.safetensors.index.json").exists() == sharded
    make_tokenizer(src)
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    args = ["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "back")]
    assert convert_main(args + (["--max-shard-size", "60KB"] if sharded else [])) == 0
    assert_same_tensors(src, tmp_path / "back")
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (
        src / "tokenizer.json"
    ).read_bytes()
    assert (tmp_path / "back" / "model.safetensors.index.json").exists() == sharded


def test_compressed_round_trip(tmp_path, hf_model_dir):
    _, src = hf_model_dir("untied")
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt"), "--compress"]) == 0
    assert convert_main(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    assert_same_tensors(src, tmp_path / "back")


def test_tied_source_with_stored_head_keeps_it(tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    build_hf_model("tied").save_pretrained(src)
    tensors = load_file(src / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    assert convert_main(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    assert_same_tensors(src, tmp_path / "back")


def _inputs():
    grid = [1, 10, 14]
    ids = np.array([[5, 6] + vision_block(grid) + [7, 8, 9]])
    return ids, dict(pixel_values=pixels([grid], 3), image_grid_thw=np.array([grid]))


def _hf_logits(model, ids, media):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids),
            use_cache=False,
            **{k: torch.as_tensor(v) for k, v in media.items()},
        )
    return out.logits.float().numpy()


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_transformers_loads_export_with_equal_logits(tmp_path, variant, hf_model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, src = hf_model_dir(variant)
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    ours = tempura_jax.load_pretrained(tmp_path / "ckpt")  # reads the Orbax checkpoint
    assert convert_main(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    ids, media = _inputs()
    ref = _hf_logits(hf, ids, media)
    np.testing.assert_allclose(np.asarray(ours(ids, **media).logits), ref, atol=1e-4, rtol=0)


def test_training_checkpoint_with_optimizer_state(tmp_path, hf_model_dir):
    """A run root with numbered steps, params + opt_state items, config in the root."""
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, src = hf_model_dir("untied")
    model = tempura_jax.load_pretrained(src)
    params = nnx.state(model, nnx.Param)
    tree = {
        "/".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)
    }
    from tempura_jax.checkpoint import nest

    nested = nest((tuple(k.split("/")), v) for k, v in tree.items())
    opt_state = optax.adamw(1e-3).init(nested)
    run = tmp_path / "run"
    tok = tmp_path / "tok"
    tok.mkdir()
    make_tokenizer(tok)
    with ocp.CheckpointManager(run, item_names=("params", "opt_state")) as mngr:
        for step, scale in ((1, 0.0), (7, 1.0)):  # step 7 is the real one
            p = {k: v * scale for k, v in tree.items()}
            mngr.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(
                        nest((tuple(k.split("/")), v) for k, v in p.items())
                    ),
                    opt_state=ocp.args.StandardSave(opt_state),
                ),
            )
    shutil.copy(src / "config.json", run / "config.json")
    (run / "tempura_checkpoint.json").write_text(json.dumps({"tokenizer_dir": str(tok)}))
    assert convert_main(["to-hf", str(run), str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids, media = _inputs()
    np.testing.assert_allclose(
        _hf_logits(hf, ids, media), np.asarray(model(ids, **media).logits), atol=1e-4, rtol=0
    )


# ---- bad inputs: one-line error naming the cause, and no output left behind ----


@pytest.fixture()
def src(tmp_path):
    d = tmp_path / "src"
    build_hf_model("untied").save_pretrained(d)
    return d


def _edit(src, fn):
    from safetensors.torch import load_file, save_file

    t = load_file(src / "model.safetensors")
    fn(t)
    save_file(t, src / "model.safetensors", metadata={"format": "pt"})


def _fails(capsys, argv, pattern):
    assert convert_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pattern in err, err
    return err


def _truncate(src):
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


BAD_TENSORS = {
    "missing": (
        lambda s: _edit(s, lambda t: t.pop("visual.merger.mlp.2.bias")),
        "missing 1 tensor(s): visual.merger.mlp.2.bias",
    ),
    "unexpected": (
        lambda s: _edit(s, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)})),
        "unexpected 1 tensor(s): model.layers.0.mlp.extra",
    ),
    "shape": (
        lambda s: _edit(s, lambda t: t.update({"model.norm.weight": torch.ones(63)})),
        "tensor model.norm.weight has shape (63,)",
    ),
    "dtype": (
        lambda s: _edit(
            s, lambda t: t.update({"model.norm.weight": torch.ones(64, dtype=torch.int32)})
        ),
        "model.norm.weight has dtype int32",
    ),
    "truncated": (_truncate, "model.safetensors: truncated: tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors(src, tmp_path, capsys, case):
    corrupt, message = BAD_TENSORS[case]
    corrupt(src)
    _fails(capsys, ["to-orbax", str(src), str(tmp_path / "o")], message)
    no_leftovers(tmp_path / "o")


def test_config_of_another_model(src, tmp_path, capsys):
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2_vl"}))
    _fails(capsys, ["to-orbax", str(src), str(tmp_path / "o")], "model_type is 'qwen2_vl'")
    no_leftovers(tmp_path / "o")


def test_existing_output_needs_overwrite(src, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    _fails(
        capsys, ["to-orbax", str(src), str(out)], "output exists and is not empty (pass --overwrite"
    )
    assert (out / "keep.txt").read_text() == "precious"
    assert convert_main(["to-orbax", str(src), str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "params").is_dir()
    hf_out = tmp_path / "h"
    hf_out.mkdir()
    (hf_out / "x").write_text("x")
    _fails(capsys, ["to-hf", str(out), str(hf_out)], "output exists and is not empty")


def test_to_hf_failure_leaves_nothing(src, tmp_path, capsys):
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 100  # checkpoint no longer fits its config
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    _fails(
        capsys,
        ["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "h")],
        "gate_proj/kernel has shape (64, 96)",
    )
    no_leftovers(tmp_path / "h")


def test_output_is_readable_and_never_the_source(src, tmp_path, capsys):
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt").stat().st_mode & 0o055  # not owner-only (mkdtemp's 0700)
    _fails(capsys, ["to-orbax", str(src), str(src), "--overwrite"], "would replace the input")
    _fails(capsys, ["to-orbax", str(src), str(tmp_path), "--overwrite"], "would replace the input")
    assert (src / "model.safetensors").exists()


def test_corrupt_orbax_data_names_the_tensors(src, tmp_path, capsys):
    assert convert_main(["to-orbax", str(src), str(tmp_path / "ckpt")]) == 0
    for f in (tmp_path / "ckpt" / "params").rglob("d/*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    _fails(capsys, ["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "h")], "cannot read")
    no_leftovers(tmp_path / "h")


def test_relative_paths(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert convert_main(["to-orbax", "src", "out/ckpt"]) == 0
    assert convert_main(["to-hf", "out/ckpt", "out/hf"]) == 0
    assert_same_tensors(src, tmp_path / "out" / "hf")


def test_module_entry_point_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-m", "converters", "to-hf", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--max-shard-size" in out.stdout and "--dtype" in out.stdout
