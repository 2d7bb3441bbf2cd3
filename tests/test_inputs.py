"""Host-side input assembly: validation, padding buckets, explicit position ids."""

import numpy as np
import pytest
from conftest import VIDEO, pixels, vision_block

import tempura_jax
from tempura_jax import forward_logits, prepare_inputs, rope_index


@pytest.fixture(scope="module")
def model(hf_model_dir):
    return tempura_jax.load_pretrained(hf_model_dir("tied")[1])


def sample():
    img, vid = [1, 10, 14], [2, 4, 6]
    ids = np.array([[5] + vision_block(img) + [6] + vision_block(vid, VIDEO) + [7]])
    media = dict(
        pixel_values=pixels([img], 1),
        image_grid_thw=np.array([img]),
        pixel_values_videos=pixels([vid], 2),
        video_grid_thw=np.array([vid]),
        second_per_grid_ts=[1.0],
    )
    return ids, media


def test_patch_bucket_padding_does_not_change_logits(model):
    ids, media = sample()
    plain = forward_logits(model, prepare_inputs(model.config, ids, **media))
    padded_inputs = prepare_inputs(model.config, ids, patch_bucket=140 + 48 + 64, **media)
    assert padded_inputs.vision.pixel_values.shape[0] == 252
    padded = forward_logits(model, padded_inputs)
    np.testing.assert_allclose(np.asarray(padded), np.asarray(plain), atol=1e-4, rtol=1e-5)


def test_explicit_position_ids_are_used_as_given(model):
    ids, media = sample()
    computed = model(ids, **media)
    pos, deltas = rope_index(
        ids,
        config=model.config,
        image_grid_thw=media["image_grid_thw"],
        video_grid_thw=media["video_grid_thw"],
        second_per_grid_ts=[1.0],
    )
    explicit = model(ids, position_ids=pos, **media)
    np.testing.assert_array_equal(np.asarray(explicit.logits), np.asarray(computed.logits))
    np.testing.assert_array_equal(explicit.rope_deltas, deltas)
    shifted = model(ids, position_ids=pos + 3, **media)
    assert not np.allclose(np.asarray(shifted.logits), np.asarray(computed.logits))


def test_mismatches_are_reported(model):
    ids, media = sample()
    cfg = model.config
    with pytest.raises(ValueError, match="image features and tokens do not match: 35 tokens, 36"):
        prepare_inputs(
            cfg,
            ids,
            **{
                **media,
                "image_grid_thw": np.array([[1, 12, 12]]),
                "pixel_values": pixels([[1, 12, 12]]),
            },
        )
    with pytest.raises(ValueError, match="video pixel values have 48 rows, grid_thw needs 64"):
        prepare_inputs(cfg, ids, **{**media, "video_grid_thw": np.array([[2, 4, 8]])})
    with pytest.raises(ValueError, match="input_ids hold 12 video tokens but no video pixels"):
        prepare_inputs(cfg, ids, **{**media, "pixel_values_videos": None, "video_grid_thw": None})
    with pytest.raises(ValueError, match=r"\(patches, 1176\)"):
        prepare_inputs(cfg, ids, **{**media, "pixel_values": np.zeros((140, 1000), np.float32)})


def test_shape_and_empty_inputs(model):
    ids, media = sample()
    cfg = model.config
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 5\) != input_ids shape"):
        prepare_inputs(cfg, ids, attention_mask=np.ones((1, 5)), **media)
    with pytest.raises(ValueError, match="non-empty"):
        prepare_inputs(cfg, np.zeros((1, 0), np.int32))
    text = np.array([[5, 6, 7]])
    empty = dict(pixel_values=np.zeros((0, 1176), np.float32), image_grid_thw=np.zeros((0, 3)))
    assert prepare_inputs(cfg, text, **empty).vision is None
    np.testing.assert_array_equal(
        np.asarray(model(text, **empty).logits), np.asarray(model(text).logits)
    )
