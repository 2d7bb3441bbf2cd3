"""Pixel rows and grids equal transformers' Qwen2VL image processor."""

import warnings

import numpy as np
import pytest

from tempura_jax.data.processor import PixelConfig, process_frames, smart_resize

SETTINGS = [
    ((180, 320), 320 * 180, 320 * 180),  # TEMPURA: 336x196
    ((360, 640), 320 * 180, 320 * 180),
    ((1080, 1920), 3136, 1003520),  # processor defaults
    ((361, 457), 3136, 200_000),
    ((50, 60), 100 * 100, 200 * 200),  # upscaled to min_pixels
    ((97, 1003), 56 * 56, 28 * 28 * 64),
]


@pytest.mark.parametrize("size,min_pixels,max_pixels", SETTINGS)
def test_images_equal_hf_processor(size, min_pixels, max_pixels):
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(sum(size))
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    hf = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    ref = hf(images=frames, return_tensors="np")
    rows, grid = process_frames(frames, PixelConfig(min_pixels=min_pixels, max_pixels=max_pixels))
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert rows.shape == ref["pixel_values"].shape and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, ref["pixel_values"])  # the same float32 arithmetic


@pytest.mark.parametrize("n_frames", [4, 5])
def test_video_equals_hf_processor(n_frames):
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(n_frames)
    frames = [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8) for _ in range(n_frames)]
    cfg = PixelConfig(min_pixels=3136, max_pixels=100_000)
    hf = Qwen2VLImageProcessor(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf(images=None, videos=[frames], return_tensors="np")
    rows, grid = process_frames(frames, cfg, as_video=True)
    np.testing.assert_array_equal(grid, ref["video_grid_thw"])  # odd counts repeat the last frame
    np.testing.assert_array_equal(rows, ref["pixel_values_videos"])


@pytest.mark.parametrize("as_video", [False, True])
def test_odd_patch_area_equals_hf_processor(as_video):
    """A 7-pixel patch (49 values, odd) takes the padded path of the
    two-values-per-gather normalisation."""
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8) for _ in range(3)]
    cfg = PixelConfig(min_pixels=1000, max_pixels=20_000, patch_size=7)
    hf = Qwen2VLImageProcessor(min_pixels=1000, max_pixels=20_000, patch_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = (
            hf(images=None, videos=[frames], return_tensors="np")
            if as_video
            else hf(images=frames, return_tensors="np")
        )
    rows, grid = process_frames(frames, cfg, as_video=as_video)
    key = "pixel_values_videos" if as_video else "pixel_values"
    np.testing.assert_array_equal(grid, ref["video_grid_thw" if as_video else "image_grid_thw"])
    np.testing.assert_array_equal(rows, ref[key])


def test_smart_resize_equals_hf():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_resize

    rng = np.random.default_rng(0)
    for h, w in rng.integers(28, 3000, (200, 2)):
        for lo, hi in ((3136, 1003520), (57600, 57600), (6272, 6272)):
            assert smart_resize(h, w, 28, lo, hi) == hf_resize(h, w, 28, lo, hi)
    with pytest.raises(ValueError, match="zero-size"):
        smart_resize(0, 10)
