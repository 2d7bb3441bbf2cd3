"""Frame-sequence images (paper Sec. 4, Fig. S1): 1-FPS frames tiled in
chronological order, each with its marker drawn by `data.stamp` (the same
drawing as training's timestamps), sent as JPEG data URLs."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
from PIL import Image

from tempura_jax.data.stamp import StampConfig, stamp
from tempura_jax.overrides import option


@dataclasses.dataclass(frozen=True)
class GridConfig:
    rows: int = option(4, "frames per grid column")
    cols: int = option(4, "frames per grid row")
    frame_width: int = option(256, "width of each frame in the grid, pixels")
    marker: str = option("{t:.0f}", "marker text per frame (t = seconds; at 1 FPS the index)")
    marker_size: float = option(0.14, "marker font size, fraction of the frame width")
    gap: int = option(4, "pixels between frames")
    quality: int = option(85, "JPEG quality")

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or self.frame_width < 16:
            raise ValueError(f"grid needs rows, cols >= 1 and frame_width >= 16, got {self}")

    @property
    def per_image(self) -> int:
        return self.rows * self.cols


def grids(frames: list[np.ndarray], times, cfg: GridConfig) -> list[np.ndarray]:
    """The frames, stamped, tiled `rows x cols` per image, in time order;
    the last image is filled with black cells."""
    marker = StampConfig(format=cfg.marker, size=cfg.marker_size)
    out = []
    for first in range(0, len(frames), cfg.per_image):
        chunk = frames[first : first + cfg.per_image]
        h, w = chunk[0].shape[:2]
        rows = min(cfg.rows, -(-len(chunk) // cfg.cols))
        canvas = np.zeros(
            (rows * h + (rows - 1) * cfg.gap, cfg.cols * w + (cfg.cols - 1) * cfg.gap, 3), np.uint8
        )
        for k, frame in enumerate(chunk):
            r, c = divmod(k, cfg.cols)
            y, x = r * (h + cfg.gap), c * (w + cfg.gap)
            canvas[y : y + h, x : x + w] = stamp(frame, float(times[first + k]), marker)
        out.append(canvas)
    return out


def overview(frames: list[np.ndarray], times, cfg: GridConfig) -> tuple[list, list]:
    """At most one grid's worth of frames spread over the whole video."""
    keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), cfg.per_image)).round())
    return [frames[int(i)] for i in keep], [float(times[int(i)]) for i in keep]


def data_url(image: np.ndarray, quality: int = 85) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_tokens(width: int, height: int) -> int:
    """OpenAI's published estimate for a high-detail image: fit in 2048x2048,
    shortest side to 768, then 170 tokens per 512-pixel tile plus 85."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * int(-(-width // 512)) * int(-(-height // 512))
