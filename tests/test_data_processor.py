"""Pixel rows and grids equal transformers' Qwen2VL image processor."""

import warnings

import numpy as np
import pytest

from tempura_jax.data import processor
from tempura_jax.data.processor import PixelConfig, process_frames, smart_resize
from tempura_jax.data.rgbx import rgbx_base

SETTINGS = [
    ((180, 320), 320 * 180, 320 * 180),  # TEMPURA: 336x196
    ((360, 640), 320 * 180, 320 * 180),
    ((1080, 1920), 3136, 1003520),  # processor defaults
    ((361, 457), 3136, 200_000),
    ((50, 60), 100 * 100, 200 * 200),  # upscaled to min_pixels
    ((97, 1003), 56 * 56, 28 * 28 * 64),
]


def rgbx_views(frames, rng):
    """The frames as the video reader hands them over: RGB views of RGBX
    buffers, whose fourth byte (random here) must be ignored."""
    out = []
    for f in frames:
        rgbx = rng.integers(0, 256, (*f.shape[:2], 4), dtype=np.uint8)
        rgbx[..., :3] = f
        out.append(rgbx[..., :3])
    return out


@pytest.mark.parametrize("layout", ["rgb", "rgbx_view"])
@pytest.mark.parametrize("size,min_pixels,max_pixels", SETTINGS)
def test_images_equal_hf_processor(size, min_pixels, max_pixels, layout):
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(sum(size))
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    hf = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    ref = hf(images=frames, return_tensors="np")
    if layout == "rgbx_view":
        frames = rgbx_views(frames, rng)
        assert all(rgbx_base(f) is not None for f in frames)
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


def test_pillow_maps_rgbx_frames_in_place():
    """The decoder's RGBX frames reach PIL without a copy on this Pillow (the
    copy fallback is exact too, but costs a sixth of a 1080p resize); only
    exact RGB views of a whole RGBX buffer qualify."""
    assert processor._can_map(), "Pillow internals changed: frames are copied into PIL"
    rgbx = np.zeros((6, 8, 4), np.uint8)
    assert rgbx_base(rgbx[..., :3]) is rgbx
    assert rgbx_base(rgbx[..., 1:]) is None  # not the first three channels
    assert rgbx_base(rgbx[1:, :, :3]) is None  # part of the buffer
    assert rgbx_base(np.zeros((6, 8, 3), np.uint8)) is None
