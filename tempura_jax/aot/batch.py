"""The batch an ahead-of-time compile is for: shapes and dtypes from the data
pipeline's own collate (so they are the trainer's), and one full row with
real vision geometry for the model-FLOPs count. No data is read."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from tempura_jax.config import ModelConfig
from tempura_jax.data.batching import collate, patch_buckets, seq_buckets
from tempura_jax.data.config import DataConfig
from tempura_jax.data.processor import target_size
from tempura_jax.model.vision_geometry import vision_geometry
from tempura_jax.train.step import batch_shardings


@dataclasses.dataclass(frozen=True)
class Shape:
    rows: int  # global rows of one micro-batch
    seq: int
    patches: int  # vision patches per row
    frame: tuple[int, int]  # (height, width) in pixels of each frame

    def frames(self, patch_size: int) -> int:
        """Frames of `frame` size that fit in `patches` (the FLOPs row's video)."""
        h, w = self.frame
        return self.patches // ((h // patch_size) * (w // patch_size))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def parse_shape(text: str) -> tuple[int, int]:
    """ "SEQ,PATCHES" -> (seq, patches)."""
    try:
        seq, patches = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--shape {text!r}: expected SEQ,PATCHES (two integers)") from None
    if seq < 1 or patches < 1:
        raise ValueError(f"--shape {text!r}: sizes must be positive")
    return seq, patches


def parse_frame(text: str) -> tuple[int, int]:
    """ "HxW" -> (height, width)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame {text!r}: expected HEIGHTxWIDTH in pixels") from None
    return h, w


def largest(data: DataConfig) -> tuple[int, int]:
    """The largest (sequence, patches) buckets the data config can produce;
    packed: the one row shape of the run."""
    if data.packing:
        return data.row_tokens, data.row_patches
    return seq_buckets(data)[-1], patch_buckets(data)[-1]


def default_frame(data: DataConfig) -> tuple[int, int]:
    """A 16:9 frame resized by the data config's pixel budget (336x196 for TEMPURA)."""
    return target_size(180, 320, data.pixels)


def check(shape: Shape, model: ModelConfig) -> None:
    v = model.vision
    h, w = shape.frame
    side = v.patch_size * v.spatial_merge_size
    if h % side or w % side:
        raise ValueError(f"--frame {h}x{w}: sides must be multiples of {side} pixels")
    if shape.patches % v.merge_unit:
        raise ValueError(f"patches {shape.patches}: not a multiple of {v.merge_unit}")
    if shape.frames(v.patch_size) < 1:
        raise ValueError(f"patches {shape.patches}: not one {h}x{w} frame")


def abstract_batch(
    shape: Shape, data: DataConfig, model: ModelConfig, mesh: Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    """The micro-batch as the trainer feeds it: collate's keys, dtypes and
    layout, `rows` global rows, the trainer's batch shardings."""
    one = collate([], data, model, pad_id=0, batch_size=1, shape=(shape.seq, shape.patches))
    shardings = batch_shardings(one, mesh)

    def sds(k: str, a: np.ndarray) -> jax.ShapeDtypeStruct:
        axis = 1 if k == "position_ids" else 0
        dims = list(a.shape)
        dims[axis] = shape.rows
        return jax.ShapeDtypeStruct(tuple(dims), a.dtype, sharding=shardings[k])

    return {k: sds(k, a) for k, a in one.items()}


def full_row(shape: Shape, model: ModelConfig, sample: int | None = None) -> dict[str, np.ndarray]:
    """One row filled the way a long sample fills it: `seq` real tokens and
    `frames` frames of real window/frame segments (the rest is padding); the
    arrays `train.flops.batch_flops` reads. `sample`: a packed row, filled by
    samples of that many tokens (each its own causal attention)."""
    v = model.vision
    h, w = shape.frame
    grid = np.array([[1, h // v.patch_size, w // v.patch_size]] * shape.frames(v.patch_size))
    geo = vision_geometry(grid, v).padded(shape.patches, v.merge_unit)
    return {
        "segment_ids": (1 + np.arange(shape.seq) // (sample or shape.seq))[None].astype(np.int32),
        "window_segments": geo.window_segments[None],
        "frame_segments": geo.frame_segments[None],
    }
