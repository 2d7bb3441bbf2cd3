"""Visual timestamps drawn on frames before resizing (TEMPURA, Table 4).

The default is TEMPURA's training scheme: `{t:.1f}` seconds in white DejaVu
Sans Bold, font size width/10, on a black box in the top-left corner. The same
function stamps training and inference frames, so the two never disagree.
The font ships with matplotlib's wheel, so it is available offline.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tempura_jax.data.rgbx import rgbx_base
from tempura_jax.overrides import option

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclasses.dataclass(frozen=True)
class StampConfig:
    enabled: bool = option(True, "draw each frame's time on it before resizing")
    format: str = option("{t:.1f}", "the text, formatted with t = seconds")
    size: float = option(0.1, "font size as a fraction of the frame width")
    position: str = option("top-left", "top-left | top-right | bottom-left | bottom-right")
    margin: float = option(0.1, "box padding around the text, as a fraction of the font size")
    font: str | None = option(None, "a .ttf path; None = DejaVu Sans Bold")

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"stamp position must be one of {POSITIONS}, got {self.position!r}")
        if not 0 < self.size <= 1:
            raise ValueError(f"stamp size must be in (0, 1], got {self.size}")
        self.format.format(t=0.0)  # fails early on a bad format string


def default_font_path() -> str:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.exists():
        raise FileNotFoundError(f"DejaVu Sans Bold not found at {path}; set stamp.font")
    return str(path)


@functools.lru_cache(maxsize=64)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path or default_font_path(), size)


def stamp_box(width: int, height: int, text: str, cfg: StampConfig) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the black box, exclusive ends, clipped to the frame."""
    size = max(1, int(width * cfg.size))
    font = _font(cfg.font, size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(round(size * cfg.margin))
    w, h = right + 2 * pad, bottom + 2 * pad
    x0 = 0 if cfg.position.endswith("left") else max(0, width - w)
    y0 = 0 if cfg.position.startswith("top") else max(0, height - h)
    return x0, y0, min(width, x0 + w), min(height, y0 + h)


@functools.lru_cache(maxsize=256)
def _rendered(width: int, height: int, text: str, cfg: StampConfig):
    """The drawn box and where it goes. Cached: every video of one width
    shows the same texts ("0.0", "1.0", ...), and rendering a 1080p-sized
    glyph costs more than the rest of the stamp."""
    x0, y0, x1, y1 = stamp_box(width, height, text, cfg)
    size = max(1, int(width * cfg.size))
    pad = int(round(size * cfg.margin))
    box = Image.new("RGB", (x1 - x0, y1 - y0))
    ImageDraw.Draw(box).text((pad, pad), text, font=_font(cfg.font, size), fill=(255, 255, 255))
    rgb, rgbx = np.asarray(box), np.asarray(box.convert("RGBX"))  # both: copies stay contiguous
    rgb.flags.writeable = rgbx.flags.writeable = False
    return (slice(y0, y1), slice(x0, x1)), rgb, rgbx


def stamp(
    frame: np.ndarray, t: float, cfg: StampConfig = StampConfig(), inplace: bool = False
) -> np.ndarray:
    """`frame` (H x W x 3 uint8) with time `t` drawn on it: a copy, or the
    frame itself when `inplace` (the pipeline owns its decoded frames)."""
    if not cfg.enabled:
        return frame
    height, width = frame.shape[:2]
    where, rgb, rgbx = _rendered(width, height, cfg.format.format(t=t), cfg)
    out = frame if inplace else frame.copy()
    base = rgbx_base(out)
    if base is not None:  # whole pixels: a contiguous copy, not a strided one
        base[where] = rgbx
    else:
        out[where] = rgb
    return out
