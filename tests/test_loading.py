"""Config parsing (both HF layouts) and checkpoint loading, good and bad."""

import json
import shutil

import numpy as np
import pytest
from conftest import build_hf_model, vision_block

import tempura_jax
from tempura_jax import config as C
from tempura_jax.io.safetensors import SafetensorsError

# Qwen2.5-VL-3B-Instruct's config.json as published (flat 4.x layout).
QWEN25_VL_3B_FLAT = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


def nested_5x(flat: dict) -> dict:
    """The same model in the nested layout newer transformers write."""
    text = {
        k: v for k, v in flat.items() if k not in ("vision_config", "rope_scaling", "rope_theta")
    }
    text["rope_parameters"] = {
        "rope_type": "default",
        "mrope_section": [16, 24, 24],
        "rope_theta": 1000000.0,
    }
    keep = (
        "model_type",
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "tie_word_embeddings",
    )
    return {
        **{k: flat[k] for k in keep},
        "text_config": text,
        "vision_config": flat["vision_config"],
    }


def test_flat_and_nested_layouts_parse_to_the_3b_preset():
    flat = C.from_hf_dict(QWEN25_VL_3B_FLAT)
    assert flat == C.qwen2_5_vl_3b()
    assert C.from_hf_dict(nested_5x(QWEN25_VL_3B_FLAT)) == flat
    # our own writer round-trips
    assert C.from_hf_dict(C.to_hf_dict(flat)) == flat


def test_config_errors():
    with pytest.raises(C.ConfigError, match="model_type is 'llama'"):
        C.from_hf_dict({**QWEN25_VL_3B_FLAT, "model_type": "llama"})
    bad = {**QWEN25_VL_3B_FLAT, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 23]}}
    with pytest.raises(C.ConfigError, match="mrope_section"):
        C.from_hf_dict(bad)


def test_hf_writes_config_we_parse(hf_model_dir):
    _, path = hf_model_dir("untied")
    cfg = C.from_hf_json(path)
    assert not cfg.text.tie_word_embeddings and cfg.text.num_key_value_heads == 1
    assert cfg.vision.fullatt_block_indexes == (0, 2)


@pytest.fixture(scope="module")
def reference(hf_model_dir):
    """(saved dir, inputs, logits of the single-file load)."""
    _, path = hf_model_dir("untied")
    grid = [1, 6, 8]
    ids = np.array([[5] + vision_block(grid) + [6, 7]])
    media = dict(
        pixel_values=np.random.default_rng(0).standard_normal((48, 1176)).astype(np.float32),
        image_grid_thw=np.array([grid]),
    )
    logits = np.asarray(tempura_jax.load_pretrained(path)(ids, **media).logits)
    return path, ids, media, logits


def test_sharded_index_loads_identically(reference, tmp_path):
    path, ids, media, logits = reference
    build_hf_model("untied").save_pretrained(tmp_path, max_shard_size="60KB")
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    out = tempura_jax.load_pretrained(tmp_path)(ids, **media).logits
    np.testing.assert_array_equal(np.asarray(out), logits)


def test_transformers_5x_in_memory_names(reference, tmp_path):
    from safetensors.numpy import load_file, save_file

    path, ids, media, logits = reference
    tensors = load_file(path / "model.safetensors")
    renamed = {
        k.replace("visual.", "model.visual.", 1)
        if k.startswith("visual.")
        else k.replace("model.", "model.language_model.", 1)
        if k.startswith("model.")
        else k: v
        for k, v in tensors.items()
    }
    assert "model.language_model.norm.weight" in renamed
    shutil.copy(path / "config.json", tmp_path / "config.json")
    save_file(renamed, tmp_path / "model.safetensors")
    out = tempura_jax.load_pretrained(tmp_path)(ids, **media).logits
    np.testing.assert_array_equal(np.asarray(out), logits)


def _rewrite(src, dst, edit):
    from safetensors.numpy import load_file, save_file

    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")


def test_missing_tensor(reference, tmp_path):
    _rewrite(reference[0], tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(tempura_jax.CheckpointError, match="missing 1 tensor.*layers.1.mlp.up_proj"):
        tempura_jax.load_pretrained(tmp_path)


def test_unexpected_tensor(reference, tmp_path):
    def add(t):
        t["model.layers.9.extra.weight"] = np.zeros(3, np.float32)

    _rewrite(reference[0], tmp_path, add)
    with pytest.raises(tempura_jax.CheckpointError, match="unexpected 1 tensor.*layers.9.extra"):
        tempura_jax.load_pretrained(tmp_path)


def test_misshaped_tensor(reference, tmp_path):
    def shrink(t):
        t["visual.blocks.0.attn.qkv.weight"] = t["visual.blocks.0.attn.qkv.weight"][:-1]

    _rewrite(reference[0], tmp_path, shrink)
    with pytest.raises(tempura_jax.CheckpointError, match=r"qkv.weight has shape \(95, 32\)"):
        tempura_jax.load_pretrained(tmp_path)


def test_truncated_file(reference, tmp_path):
    src = reference[0]
    shutil.copy(src / "config.json", tmp_path / "config.json")
    data = (src / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(SafetensorsError, match="model.safetensors: truncated: tensor"):
        tempura_jax.load_pretrained(tmp_path)


def test_no_weights(tmp_path, reference):
    shutil.copy(reference[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(SafetensorsError, match="no model.safetensors"):
        tempura_jax.load_pretrained(tmp_path)


def test_wrong_model_type_dir(reference, tmp_path):
    cfg = json.loads((reference[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2_vl"}))
    with pytest.raises(C.ConfigError, match="config.json: model_type is 'qwen2_vl'"):
        tempura_jax.load_pretrained(tmp_path)


def test_tie_flag_follows_transformers():
    nested = nested_5x(QWEN25_VL_3B_FLAT)
    # transformers 4.x lets the text config decide (it writes a root default too).
    untied_4x = {**nested, "tie_word_embeddings": True}
    untied_4x["text_config"] = {**nested["text_config"], "tie_word_embeddings": False}
    assert not C.from_hf_dict(untied_4x).text.tie_word_embeddings
    # transformers 5.x writes the flag only at the root.
    tied_5x = {**nested, "tie_word_embeddings": True}
    tied_5x["text_config"] = {
        k: v for k, v in nested["text_config"].items() if k != "tie_word_embeddings"
    }
    assert C.from_hf_dict(tied_5x).text.tie_word_embeddings
    flat_absent = {k: v for k, v in QWEN25_VL_3B_FLAT.items() if k != "tie_word_embeddings"}
    assert not C.from_hf_dict(flat_absent).text.tie_word_embeddings


def test_tied_config_with_a_different_stored_head_fails(hf_model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, src = hf_model_dir("untied")
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(load_file(src / "model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(tempura_jax.CheckpointError, match="lm_head.weight differs from"):
        tempura_jax.load_pretrained(tmp_path)
