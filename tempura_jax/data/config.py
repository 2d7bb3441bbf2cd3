"""Data pipeline configuration: one frozen tree, overridable key by key."""

from __future__ import annotations

import dataclasses

from tempura_jax.data.media import Sampling
from tempura_jax.data.processor import PixelConfig
from tempura_jax.data.stamp import StampConfig
from tempura_jax.overrides import option

VISUAL_MODES = ("frames", "video")
TASKS = ("auto", "dense", "masked", "free")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`visual_mode`: "frames" gives every frame its own image block (TEMPURA's
    fixed position id per frame), "video" one Qwen video block.
    `task` decides the checks: "dense" validates the target's events against
    the video, "masked" needs mask windows, "auto" picks per record (masked if
    it has windows), "free" checks nothing beyond the chat format."""

    data: tuple[str, ...] = option((), "VER-style JSON files (comma-separated)")
    media_root: str = option(".", "folder the records' video paths are relative to")
    tokenizer: str = option("", "local HF tokenizer directory")
    sampling: Sampling = Sampling()
    stamp: StampConfig = StampConfig()
    pixels: PixelConfig = PixelConfig()
    visual_mode: str = option(
        "frames", "frames: one image block per frame (TEMPURA); video: one Qwen video block"
    )
    task: str = option("auto", "auto | dense | masked | free: which checks a record must pass")
    blank_masked: bool = option(True, "black frames inside masked windows (the reference forgot)")
    stamp_masked: bool = option(True, "still draw the time on blanked frames")
    mask_fps: float = option(1.0, "frame rate of masked_start_end_frame_idxs")
    event_tolerance: float = option(1.0, "seconds of slack for event checks")
    system_prompt: str | None = option(
        "You are a helpful assistant.",
        "the system turn of Qwen's chat template; None leaves it out",
    )
    max_seq_len: int = option(
        8192, "longest sequence; a longer sample drops frames first, never target tokens"
    )
    seq_bucket_min: int = option(256, "smallest padded sequence length")
    seq_bucket_growth: float = option(
        1.5, "ratio between padded sequence lengths (few shapes, few compiles)"
    )
    patch_bucket_min: int = option(1024, "smallest padded vision patch count")
    patch_bucket_growth: float = option(1.25, "ratio between padded patch counts")
    packing: bool = option(
        False,
        "pack several samples per row up to (max_seq_len, pack_patches): one step shape "
        "for the whole run instead of (sequence, patch) buckets",
    )
    pack_seq_len: int = option(
        0,
        "tokens per packed row; 0 = max_seq_len. Longer rows (fewer per device) fit "
        "several long samples: less padding, same tokens per device",
    )
    pack_patches: int = option(
        0,
        "vision patches per packed row (a multiple of merge_size^2); 0 = "
        "merge_size^2 x the row's tokens, which never binds",
    )
    pack_lengths: str | None = option(
        None,
        "JSON file caching each record's measured (tokens, patches) for packing; "
        "changed records and configs are measured again",
    )
    pack_window: int = option(
        64, "rows open at once while packing (first fit within them): more fill, more reordering"
    )
    pack_sort: int = option(
        0,
        "0: first fit in shuffled order within pack_window open rows; N: best fit, "
        "largest first, within blocks of N shuffled records (rows shuffled after), "
        "which fills rows closer to the bound",
    )
    batch_size: int = option(1, "records per batch per process (training sets it from batch.*)")
    seed: int = option(0, "shuffle seed")
    shuffle: bool = option(True, "reshuffle the records every epoch")
    num_epochs: int | None = option(
        1, "passes over the records; None repeats forever (training sets it from epochs)"
    )
    read_threads: int = option(
        4,
        "threads building examples per process (decode, resize, tokenise release the GIL)",
    )
    workers: int = option(0, "Grain worker processes; 0 builds examples in this process")
    prefetch: int = option(2, "batches buffered per worker process")
    max_skip_fraction: float = option(
        0.05, "fail the run when more than this share of records is skipped"
    )
    skip_log: str | None = option(
        None, "JSON lines file, one line per skipped record and its reason"
    )
    pixel_dtype: str = option("float32", "float32 or bfloat16 (half the host-to-device bytes)")

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
        unit = self.pixels.merge_size**2
        if self.pack_seq_len and self.pack_seq_len < self.max_seq_len:
            raise ValueError(
                f"pack_seq_len {self.pack_seq_len} is below max_seq_len {self.max_seq_len}"
            )
        if self.pack_sort < 0:
            raise ValueError(f"pack_sort must be >= 0 (0 = first fit), got {self.pack_sort}")
        if self.pack_patches < 0 or self.pack_patches % unit or self.pack_window < 1:
            raise ValueError(
                f"pack_patches must be a non-negative multiple of {unit} and pack_window >= 1, "
                f"got {self.pack_patches} and {self.pack_window}"
            )
        if self.batch_size < 1 or self.max_seq_len < 16:
            raise ValueError("batch_size must be >= 1 and max_seq_len >= 16")

    def replace(self, **kw) -> DataConfig:
        return dataclasses.replace(self, **kw)

    @property
    def row_tokens(self) -> int:
        """Tokens per packed row (a sample still holds at most max_seq_len)."""
        return self.pack_seq_len or self.max_seq_len

    @property
    def row_patches(self) -> int:
        """Patches per packed row."""
        return self.pack_patches or self.pixels.merge_size**2 * self.row_tokens

    @property
    def as_video(self) -> bool:
        return self.visual_mode == "video"
