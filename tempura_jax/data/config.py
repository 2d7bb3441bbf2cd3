"""Data pipeline configuration: one frozen tree, overridable key by key."""

from __future__ import annotations

import dataclasses

from tempura_jax.data.media import Sampling
from tempura_jax.data.processor import PixelConfig
from tempura_jax.data.stamp import StampConfig

VISUAL_MODES = ("frames", "video")
TASKS = ("auto", "dense", "masked", "free")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`visual_mode`: "frames" gives every frame its own image block (TEMPURA's
    fixed position id per frame), "video" one Qwen video block.
    `task` decides the checks: "dense" validates the target's events against
    the video, "masked" needs mask windows, "auto" picks per record (masked if
    it has windows), "free" checks nothing beyond the chat format."""

    data: tuple[str, ...] = ()
    media_root: str = "."
    tokenizer: str = ""
    sampling: Sampling = Sampling()
    stamp: StampConfig = StampConfig()
    pixels: PixelConfig = PixelConfig()
    visual_mode: str = "frames"
    task: str = "auto"
    blank_masked: bool = True  # black frames inside masked windows (the reference forgot)
    stamp_masked: bool = True  # still draw the time on blanked frames
    mask_fps: float = 1.0  # frame rate of masked_start_end_frame_idxs
    event_tolerance: float = 1.0  # seconds of slack for event checks
    system_prompt: str | None = "You are a helpful assistant."
    max_seq_len: int = 8192
    seq_bucket_min: int = 256
    seq_bucket_growth: float = 1.5
    patch_bucket_min: int = 1024
    patch_bucket_growth: float = 1.25
    batch_size: int = 1  # per process
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None repeats forever
    # Examples are built by `read_threads` threads (decoding, resizing and
    # tokenising release the GIL) in each of `workers` processes (0: this one).
    read_threads: int = 4
    workers: int = 0
    prefetch: int = 2  # batches buffered per worker process
    max_skip_fraction: float = 0.05
    skip_log: str | None = None  # JSON lines, one per skipped record
    pixel_dtype: str = "float32"  # or "bfloat16": half the host-to-device bytes

    def __post_init__(self):
        if self.visual_mode not in VISUAL_MODES:
            raise ValueError(f"visual_mode must be one of {VISUAL_MODES}, got {self.visual_mode!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.pixel_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"pixel_dtype must be float32 or bfloat16, got {self.pixel_dtype!r}")
        if self.seq_bucket_growth <= 1 or self.patch_bucket_growth <= 1:
            raise ValueError("bucket growth factors must be > 1")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.batch_size < 1 or self.max_seq_len < 16:
            raise ValueError("batch_size must be >= 1 and max_seq_len >= 16")

    def replace(self, **kw) -> DataConfig:
        return dataclasses.replace(self, **kw)

    @property
    def as_video(self) -> bool:
        return self.visual_mode == "video"
