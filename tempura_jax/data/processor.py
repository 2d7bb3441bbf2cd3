"""Pixel rows exactly as transformers' Qwen2VL image processor makes them, in NumPy.

smart_resize (multiples of 28 within [min_pixels, max_pixels]), PIL bicubic
resize, rescale by 1/255 and CLIP normalisation (one float32 lookup table per
channel: the same float32 arithmetic as the processor), then patch rows of
3*2*14*14 values in the processor's merge-window order. No torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from PIL import Image

from tempura_jax.data.rgbx import rgbx_base
from tempura_jax.overrides import option

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class PixelConfig:
    """Defaults are TEMPURA's: min = max = 320*180 pixels, so a 16:9 frame
    becomes 336x196 (12x7 merged tokens)."""

    min_pixels: int = option(320 * 180, "smart_resize's lower pixel budget per frame")
    max_pixels: int = option(320 * 180, "smart_resize's upper pixel budget per frame")
    patch_size: int = option(14, "vision patch side in pixels")
    merge_size: int = option(2, "patches merged per side into one LLM token")
    temporal_patch_size: int = option(2, "frames per temporal patch (an image is repeated)")
    mean: tuple[float, float, float] = option(CLIP_MEAN, "per-channel normalisation mean (CLIP)")
    std: tuple[float, float, float] = option(CLIP_STD, "per-channel normalisation std (CLIP)")

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def row_size(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 1003520
) -> tuple[int, int]:
    """Qwen's resize target: multiples of `factor`, aspect ratio kept, area in range."""
    if height <= 0 or width <= 0:
        raise ValueError(f"zero-size frame {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is above 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def max_frame_patches(cfg: PixelConfig) -> int:
    """The most patches `smart_resize` gives one frame of any accepted aspect
    ratio (<= 200): the static frame bound of a training run's vision attention.
    Rounded sides stay within max_pixels; a short side clamped to one factor
    gives factor x the long side; a frame scaled up to min_pixels rounds both
    sides up, and its area's supremum is taken per value of the short side's
    ceiling k (short side in ((k - 1) f, k f], long side = min / short)."""
    f, ratio, lo = cfg.factor, 200.0, cfg.min_pixels
    clamped = f * math.floor(math.sqrt(ratio * cfg.max_pixels) / f) * f
    best = max(cfg.max_pixels, clamped)
    short_min = math.sqrt(lo / ratio)
    for k in range(max(1, math.ceil(short_min / f)), math.ceil(math.sqrt(lo) / f) + 1):
        long_sup = lo / max((k - 1) * f, short_min)  # at the short side's lower end
        best = max(best, k * f * math.ceil(long_sup / f) * f)
    return int(best // cfg.patch_size**2)


def target_size(height: int, width: int, cfg: PixelConfig) -> tuple[int, int]:
    return smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)


def tokens_per_frame(height: int, width: int, cfg: PixelConfig) -> int:
    """Merged (LLM) tokens of one frame in per-frame image mode."""
    h, w = target_size(height, width, cfg)
    return (h // cfg.factor) * (w // cfg.factor)


def _lut(cfg: PixelConfig) -> np.ndarray:
    """(3, 256) float32: the processor's rescale (float64 product, cast to
    float32) followed by its float32 normalisation."""
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(cfg.mean, np.float32)[:, None]
    std = np.asarray(cfg.std, np.float32)[:, None]
    return (scaled[None, :] - mean) / std


def _map_rgbx(base: np.ndarray) -> Image.Image:
    """An RGB PIL image over an RGBX buffer, without a copy: PIL stores RGB
    pixels in four bytes, so the buffer already has its layout (the fourth
    byte is never read). Uses Pillow internals, hence `_can_map`."""
    image = Image.new("RGB", (0, 0))._new(
        Image.core.map_buffer(base, (base.shape[1], base.shape[0]), "raw", 0, ("RGB", 0, 1))
    )
    image.readonly = 1
    return image


@functools.cache
def _can_map() -> bool:
    """Whether this Pillow maps RGBX buffers as RGB images, resizing them as
    it resizes a copied RGB image (checked once on a small random frame)."""
    rgbx = np.random.default_rng(0).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    try:
        mapped = _map_rgbx(rgbx)
        ok = mapped.mode == "RGB" and mapped.size == (50, 30)
        ok = ok and np.array_equal(np.asarray(mapped), rgbx[..., :3])
        copied = Image.fromarray(np.ascontiguousarray(rgbx[..., :3]))
        ok = ok and np.array_equal(
            np.asarray(mapped.resize((17, 11), Image.BICUBIC)),
            np.asarray(copied.resize((17, 11), Image.BICUBIC)),
        )
    except Exception:  # noqa: BLE001 - any failure of the internals means: copy instead
        return False
    return bool(ok)


def resize_frame(frame: np.ndarray, cfg: PixelConfig) -> np.ndarray:
    """One uint8 frame bicubic-resized (PIL, as the processor) to its smart_resize size.
    The decoder's frames are RGB views of RGBX buffers; PIL reads those in place
    (at 1080p the copy into PIL costs 1.8 ms, a sixth of the resize)."""
    th, tw = target_size(frame.shape[0], frame.shape[1], cfg)
    if (th, tw) == frame.shape[:2]:
        return frame
    base = rgbx_base(frame)
    if base is not None and _can_map():
        image = _map_rgbx(base)
    else:
        image = Image.new("RGB", (frame.shape[1], frame.shape[0]), None)  # None: not zero-filled
        image.frombytes(np.ascontiguousarray(frame))
    return np.asarray(image.resize((tw, th), Image.BICUBIC))


def resize(frames: list[np.ndarray], cfg: PixelConfig) -> np.ndarray:
    """(n, H', W', 3) uint8: every frame resized; all frames must share one size."""
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"frames of different sizes: {sorted(sizes)}")
    return np.stack([resize_frame(f, cfg) for f in frames])


@functools.lru_cache(maxsize=8)
def _pair_lut(cfg: PixelConfig) -> np.ndarray:
    """(3 * 65536,) int64: entry 65536c + u holds the two float32 values of
    channel c for the byte pair whose native uint16 is u, so one gather
    normalises two pixels (half the gathers of a byte table)."""
    first, second = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(-1, 2).T
    lut = _lut(cfg)
    pairs = np.stack([lut[:, first], lut[:, second]], axis=-1)  # (3, 65536, 2) float32
    return np.ascontiguousarray(pairs).reshape(-1).view(np.int64)


def patchify(
    resized: np.ndarray, cfg: PixelConfig, as_video: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and grid_thw rows of resized uint8 frames.

    Images: every frame is one image (repeated to the temporal patch size),
    one grid row each. Video: consecutive frames are paired into temporal
    patches (the last frame repeated when the count is odd), one grid row.
    The uint8 values are put in row order first, then normalised two at a
    time through `_pair_lut`; an image's temporal repeat copies float rows.
    """
    n, h, w, _ = resized.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    if as_video:
        if n % tp:
            resized = np.concatenate([resized, np.repeat(resized[-1:], tp - n % tp, 0)])
        t, k = resized.shape[0] // tp, tp
        grid = np.array([[t, gh, gw]], np.int64)
    else:
        t, k = n, 1
        grid = np.tile(np.array([[1, gh, gw]], np.int64), (n, 1))
    x = resized.reshape(t, k, gh // m, m, p, gw // m, m, p, 3)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)  # (t, gh/m, gw/m, m, m, C, k, p, p)
    x = np.ascontiguousarray(x).reshape(-1, 3, k * p * p)
    if x.shape[-1] % 2:  # odd patch area: pad one byte, dropped below
        x = np.concatenate([x, np.zeros((*x.shape[:2], 1), np.uint8)], axis=-1)
    idx = np.add(x.view(np.uint16), np.arange(0, 3 * 65536, 65536)[:, None], dtype=np.intp)
    values = np.take(_pair_lut(cfg), idx).view(np.float32)[..., : k * p * p]
    if k == tp and values.flags.c_contiguous:
        return values.reshape(-1, cfg.row_size), grid
    rows = np.empty((len(values), 3, tp, p * p), np.float32)
    rows[...] = values.reshape(len(values), 3, k, p * p)
    return rows.reshape(-1, cfg.row_size), grid


def process_frames(
    frames: list[np.ndarray], cfg: PixelConfig = PixelConfig(), as_video: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values (rows, 1176) float32, grid_thw (k, 3) int64), like the processor."""
    if not frames:
        raise ValueError("no frames to process")
    return patchify(resize(frames, cfg), cfg, as_video)
