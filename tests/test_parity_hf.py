"""Numeric parity with transformers' Qwen2_5_VLForConditionalGeneration (torch, CPU, fp32).

Models are tiny random HF models saved with `save_pretrained` and loaded through
`tempura_jax.load_pretrained`. Where transformers' own rope index departs from
the original semantics (fractional second_per_grid_ts), HF gets our ids explicitly.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import VIDEO, pixels, vision_block

import tempura_jax
from tempura_jax.model.vision import VisionInputs
from tempura_jax.model.vision_geometry import vision_geometry

TOL = 1e-4


@pytest.fixture(scope="module", params=["tied", "untied"])
def pair(request, hf_model_dir):
    hf, path = hf_model_dir(request.param)
    return hf, tempura_jax.load_pretrained(path, dtype="float32", compute_dtype="float32")


def hf_logits(hf, ids, mask=None, position_ids=None, **media):
    kw = {k: torch.as_tensor(v) for k, v in media.items() if v is not None}
    with torch.no_grad():
        out = hf(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=None if mask is None else torch.as_tensor(mask, dtype=torch.long),
            position_ids=None
            if position_ids is None
            else torch.as_tensor(position_ids, dtype=torch.long),
            use_cache=False,
            **kw,
        )
    return out.logits.float().numpy()


def assert_close(ours, ref, mask=None):
    ours = np.asarray(ours)
    assert ours.shape == ref.shape
    if mask is not None:
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    err = np.abs(ours - ref).max()
    assert err <= TOL, f"max abs logit diff {err:.3g} (scale {np.abs(ref).max():.3g})"
    assert np.abs(ref).max() > 1.0  # a test on near-zero logits would prove nothing


def text(*tokens):
    return list(tokens)


def test_vision_tower(hf_model_dir):
    """Odd, non-square, non-multiple-of-window grids plus a video, in one tower call."""
    hf, path = hf_model_dir("tied")
    model = tempura_jax.load_pretrained(path, dtype="float32", compute_dtype="float32")
    grids = np.array([[1, 10, 14], [3, 6, 8], [1, 4, 4], [2, 18, 12]])
    px = pixels(grids, seed=1)
    with torch.no_grad():
        ref = hf.model.visual(torch.as_tensor(px), grid_thw=torch.as_tensor(grids)).numpy()
    g = vision_geometry(grids, model.config.vision)
    vin = VisionInputs(
        px, g.window_index, g.reverse_index, g.window_segments, g.frame_segments, g.rotary_pos
    )
    ours = np.asarray(model.visual(vin))
    err = np.abs(ours - ref).max()
    assert ours.shape == ref.shape == (int(grids.prod(-1).sum()) // 4, 64)
    assert err <= TOL and np.abs(ref).max() > 1.0, err


def test_text_only(pair):
    hf, model = pair
    ids = np.random.default_rng(0).integers(0, 280, (2, 17))
    assert_close(model(ids).logits, hf_logits(hf, ids))


def test_one_image(pair):
    hf, model = pair
    grid = [1, 10, 14]
    ids = np.array([text(5, 6) + vision_block(grid) + text(7, 8, 9)])
    px = pixels([grid])
    ref = hf_logits(hf, ids, pixel_values=px, image_grid_thw=np.array([grid]))
    assert_close(model(ids, pixel_values=px, image_grid_thw=np.array([grid])).logits, ref)


def test_per_frame_images(pair):
    """TEMPURA's per-frame mode: each frame its own image block, nothing between."""
    hf, model = pair
    grids = np.array([[1, 6, 10]] * 4)
    ids = np.array([text(5) + sum((vision_block(g) for g in grids), []) + text(7, 8)])
    px = pixels(grids, seed=2)
    ref = hf_logits(hf, ids, pixel_values=px, image_grid_thw=grids)
    assert_close(model(ids, pixel_values=px, image_grid_thw=grids).logits, ref)


@pytest.mark.parametrize("spg", [2.0, 0.7])
def test_video(pair, spg):
    hf, model = pair
    grid = [4, 6, 8]
    ids = np.array([text(5, 6) + vision_block(grid, VIDEO) + text(7, 8)])
    px = pixels([grid], seed=3)
    media = dict(pixel_values_videos=px, video_grid_thw=np.array([grid]))
    ours = model(ids, second_per_grid_ts=[spg], **media).logits
    pos, _ = tempura_jax.rope_index(
        ids, config=model.config, video_grid_thw=[grid], second_per_grid_ts=[spg]
    )
    if float(spg).is_integer():  # transformers 4.5x agrees with the original semantics here
        ref = hf_logits(hf, ids, second_per_grid_ts=torch.tensor([spg]), **media)
    else:  # it truncates second_per_grid_t before multiplying: feed the original ids
        ref = hf_logits(hf, ids, position_ids=pos, **media)
    assert_close(ours, ref)


def test_padded_batch_mixed_media(pair):
    """Two samples, left padding, an image in one and a video in the other."""
    hf, model = pair
    img, vid = [1, 10, 14], [2, 4, 6]
    a = text(5, 6) + vision_block(img) + text(7, 8, 9, 10)
    b = text(11) + vision_block(vid, VIDEO) + text(12)
    s = max(len(a), len(b))
    ids = np.full((2, s), 0)
    mask = np.zeros((2, s), np.int64)
    for i, seq in enumerate((a, b)):
        ids[i, s - len(seq) :], mask[i, s - len(seq) :] = seq, 1
    media = dict(
        pixel_values=pixels([img], seed=4),
        image_grid_thw=np.array([img]),
        pixel_values_videos=pixels([vid], seed=5),
        video_grid_thw=np.array([vid]),
    )
    ref = hf_logits(hf, ids, mask, second_per_grid_ts=torch.tensor([1.0]), **media)
    out = model(ids, attention_mask=mask, second_per_grid_ts=[1.0], **media)
    assert_close(out.logits, ref, mask)
    with torch.no_grad():
        _, hf_deltas = hf.model.get_rope_index(
            torch.as_tensor(ids),
            torch.as_tensor(media["image_grid_thw"]),
            torch.as_tensor(media["video_grid_thw"]),
            torch.tensor([1.0]),
            torch.as_tensor(mask),
        )
    np.testing.assert_array_equal(out.rope_deltas, hf_deltas.numpy())


def test_processor_output(hf_model_dir):
    """Pixel rows straight from transformers' own Qwen2-VL image processor."""
    from transformers import Qwen2VLImageProcessor

    hf, path = hf_model_dir("untied")
    model = tempura_jax.load_pretrained(path)
    proc = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=200 * 200)
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 256, (150, 230, 3), dtype=np.uint8) for _ in range(2)]
    feats = proc(images=frames, return_tensors="np")
    grids = feats["image_grid_thw"]
    ids = np.array([text(5) + sum((vision_block(g) for g in grids), []) + text(6)])
    ref = hf_logits(hf, ids, pixel_values=feats["pixel_values"], image_grid_thw=grids)
    assert_close(model(ids, pixel_values=feats["pixel_values"], image_grid_thw=grids).logits, ref)


def test_bf16_params_close_to_fp32(hf_model_dir):
    """bf16 parameters + bf16 compute stay near fp32 (softmax/norms in fp32)."""
    _, path = hf_model_dir("tied")
    grid = [1, 10, 14]
    ids = np.array([text(5, 6) + vision_block(grid) + text(7, 8, 9)])
    media = dict(pixel_values=pixels([grid]), image_grid_thw=np.array([grid]))
    f32 = tempura_jax.load_pretrained(path, dtype="float32", compute_dtype="float32")
    b16 = tempura_jax.load_pretrained(path, dtype="bfloat16", compute_dtype="bfloat16")
    assert b16.model.embed_tokens[...].dtype == jnp.bfloat16
    ref, out = np.asarray(f32(ids, **media).logits), np.asarray(b16(ids, **media).logits)
    assert out.dtype == np.float32
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel
