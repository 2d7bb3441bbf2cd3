"""Fixed-shape batches: sequences padded to length buckets and vision patches
padded to patch-count buckets, so the jitted step compiles at most
len(seq buckets) x len(patch buckets) times.

Vision arrays keep a leading batch axis (per-sample patches and window
geometry), so a batch shards over the data axes like the text arrays do.
"""

from __future__ import annotations

import math

import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.data.chat import IGNORE
from tempura_jax.data.config import DataConfig
from tempura_jax.data.sample import Example
from tempura_jax.model.inputs import ModelInputs
from tempura_jax.model.vision import VisionInputs
from tempura_jax.model.vision_geometry import vision_geometry

TEXT_KEYS = ("input_ids", "segment_ids", "labels")
MULTIPLE = 64


def buckets(minimum: int, maximum: int, growth: float, multiple: int = MULTIPLE) -> list[int]:
    """Increasing sizes from `minimum` to `maximum` (both included), each a
    multiple of `multiple` except possibly `maximum`."""
    out, b = [], max(multiple, math.ceil(minimum / multiple) * multiple)
    while b < maximum:
        out.append(b)
        b = max(b + multiple, math.ceil(b * growth / multiple) * multiple)
    out.append(maximum)
    return out


def pick(n: int, sizes: list[int], what: str) -> int:
    for s in sizes:
        if s >= n:
            return s
    raise ValueError(f"{what} {n} exceeds the largest bucket {sizes[-1]}")


def seq_buckets(cfg: DataConfig) -> list[int]:
    return buckets(min(cfg.seq_bucket_min, cfg.max_seq_len), cfg.max_seq_len, cfg.seq_bucket_growth)


def patch_buckets(cfg: DataConfig) -> list[int]:
    # Every merged token is one LLM position, so a sample holds at most
    # 4 * max_seq_len patches.
    top = math.ceil(cfg.pixels.merge_size**2 * cfg.max_seq_len / MULTIPLE) * MULTIPLE
    return buckets(min(cfg.patch_bucket_min, top), top, cfg.patch_bucket_growth)


def batch_shape(examples: list[Example], cfg: DataConfig) -> tuple[int, int]:
    """(sequence length, patches per sample) buckets for these examples."""
    s = pick(max(e.num_tokens for e in examples), seq_buckets(cfg), "sequence length")
    p = pick(max(e.num_patches for e in examples), patch_buckets(cfg), "patch count")
    return s, p


def collate(
    examples: list[Example],
    cfg: DataConfig,
    model_cfg: ModelConfig,
    pad_id: int,
    batch_size: int | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Stack examples into one fixed-shape batch. Rows beyond the examples
    (skipped records, a short last batch) are all padding with no loss.
    `shape` forces (sequence length, patches), e.g. agreed across hosts."""
    b = batch_size or len(examples)
    if b < 1:
        raise ValueError("cannot collate an empty batch without a batch_size")
    if shape is None and not examples:  # every record skipped: the smallest buckets
        shape = (seq_buckets(cfg)[0], patch_buckets(cfg)[0])
    shape = shape or batch_shape(examples, cfg)
    s, p = shape
    unit = model_cfg.vision.merge_unit
    dtype = pixel_dtype(cfg)
    out = {
        "input_ids": np.full((b, s), pad_id, np.int32),
        "segment_ids": np.zeros((b, s), np.int32),
        "labels": np.full((b, s), IGNORE, np.int32),
        "position_ids": np.ones((3, b, s), np.int32),
        "num_image_tokens": np.zeros((b,), np.int32),
        "pixel_values": np.zeros((b, p, cfg.pixels.row_size), dtype),
        "window_index": np.zeros((b, p // unit), np.int32),
        "reverse_index": np.zeros((b, p // unit), np.int32),
        "window_segments": np.full((b, p), -1, np.int32),
        "frame_segments": np.full((b, p), -1, np.int32),
        "rotary_pos": np.zeros((b, p, 2), np.int32),
    }
    geoms = [vision_geometry(e.grid_thw, model_cfg.vision).padded(p, unit) for e in examples]
    for i, (e, g) in enumerate(zip(examples, geoms, strict=True)):
        n = e.num_tokens
        if n > s or e.num_patches > p:
            raise ValueError(f"{e.source}: {n} tokens / {e.num_patches} patches exceed {s}/{p}")
        out["input_ids"][i, :n] = e.input_ids
        out["segment_ids"][i, :n] = 1
        out["labels"][i, :n] = e.labels
        out["position_ids"][:, i, :n] = e.position_ids
        out["num_image_tokens"][i] = (
            0 if e.as_video else int((e.input_ids == model_cfg.image_token_id).sum())
        )
        out["pixel_values"][i, : e.num_patches] = e.pixel_values
        for k in (
            "window_index",
            "reverse_index",
            "window_segments",
            "frame_segments",
            "rotary_pos",
        ):
            out[k][i] = getattr(g, k)
    for i in range(len(examples), b):  # empty rows: a valid, fully padded vision layout
        for k in ("window_index", "reverse_index"):
            out[k][i] = np.arange(p // unit, dtype=np.int32)
    return out


def pixel_dtype(cfg: DataConfig) -> np.dtype:
    if cfg.pixel_dtype == "float32":
        return np.dtype(np.float32)
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


VISION_KEYS = (
    "pixel_values",
    "window_index",
    "reverse_index",
    "window_segments",
    "frame_segments",
    "rotary_pos",
)


def model_inputs(batch: dict[str, np.ndarray], right_padded: bool = True) -> ModelInputs:
    """The model's view of a batch (vision inputs keep their batch axis).
    `collate` writes one sample per row (ids 1, then 0), so rows are right
    padded by construction; the trainer checks each host batch. Packed rows
    (`collate_packed`) are not: pass `right_padded=False`."""
    return ModelInputs(
        input_ids=batch["input_ids"],
        segment_ids=batch["segment_ids"],
        position_ids=batch["position_ids"],
        num_image_tokens=batch["num_image_tokens"],
        vision=VisionInputs(**{k: batch[k] for k in VISION_KEYS}),
        right_padded=right_padded,
    )


def repad(batch: dict[str, np.ndarray], seq: int, patches: int, pad_id: int) -> dict:
    """Grow a collated batch to (seq, patches), e.g. to the largest bucket any
    host picked, with the same padding `collate` writes."""
    s, p = batch["input_ids"].shape[1], batch["pixel_values"].shape[1]
    if (s, p) == (seq, patches):
        return batch
    if seq < s or patches < p:
        raise ValueError(f"cannot shrink a batch from {(s, p)} to {(seq, patches)}")
    ds, dp = seq - s, patches - p
    b = batch["input_ids"].shape[0]
    m, unit = batch["window_index"].shape[1], p // batch["window_index"].shape[1]
    tail = np.broadcast_to(np.arange(m, patches // unit, dtype=np.int32), (b, patches // unit - m))
    out = dict(batch)
    out["input_ids"] = np.pad(batch["input_ids"], ((0, 0), (0, ds)), constant_values=pad_id)
    out["segment_ids"] = np.pad(batch["segment_ids"], ((0, 0), (0, ds)))
    out["labels"] = np.pad(batch["labels"], ((0, 0), (0, ds)), constant_values=IGNORE)
    out["position_ids"] = np.pad(
        batch["position_ids"], ((0, 0), (0, 0), (0, ds)), constant_values=1
    )
    out["pixel_values"] = np.pad(batch["pixel_values"], ((0, 0), (0, dp), (0, 0)))
    for k in ("window_index", "reverse_index"):
        out[k] = np.concatenate([batch[k], tail], axis=1)
    for k in ("window_segments", "frame_segments"):
        out[k] = np.pad(batch[k], ((0, 0), (0, dp)), constant_values=-1)
    out["rotary_pos"] = np.pad(batch["rotary_pos"], ((0, 0), (0, dp), (0, 0)))
    return out
