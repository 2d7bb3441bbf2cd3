"""Host-side assembly of the fixed-shape arrays the jitted model consumes.

`prepare_inputs` accepts the HF processor's outputs (NumPy or torch CPU
tensors), validates them against each other, and computes everything that
depends on values rather than shapes: 3D position ids and vision geometry.
Images and videos go through the tower together (images first), which is
equivalent to HF's two calls because attention never crosses a frame.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.model.vision import VisionInputs
from tempura_jax.model.vision_geometry import num_merged_tokens, vision_geometry
from tempura_jax.ops.block_local import Bound, static_bound
from tempura_jax.positions import rope_index


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModelInputs:
    input_ids: jax.Array  # (B, S) int32
    # (B, S) int32: 0 = padding, >0 = attention segment. Packed sequences use one id
    # each and must bring their own position_ids (rope_index numbers a row as one).
    segment_ids: jax.Array
    position_ids: jax.Array  # (3, B, S) int32
    num_image_tokens: jax.Array  # () int32: image features precede video features
    vision: VisionInputs | None = None
    # Static: every row is one sequence followed by padding (0), so a
    # length-masked kernel (cuDNN) can take it. Checked on the host (`is_right_padded`).
    right_padded: bool = dataclasses.field(default=False, metadata=dict(static=True))
    # Static: every sample (id > 0) is one run of at most this many tokens
    # (packed rows longer than a sample), so the decoder attends block-locally.
    text_bound: Bound | None = dataclasses.field(default=None, metadata=dict(static=True))


def is_right_padded(segment_ids: np.ndarray) -> bool:
    """Each row: a run of its first id, then only padding (0). An all-padding
    row qualifies (its tokens only see each other either way)."""
    seg = np.asarray(segment_ids)
    run = np.cumprod(seg == seg[:, :1], axis=1).astype(bool)
    return bool((seg[~run] == 0).all())


def _array(x, dtype=None) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor from the HF processor
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.astype(dtype) if dtype is not None else a


def _media(pixels, grid) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(pixels, grid) as arrays; an empty modality (no rows, no grids) is absent."""
    pixels, grid = _array(pixels, np.float32), _array(grid, np.int64)
    grid = None if grid is None else grid.reshape(-1, 3)
    if grid is not None and len(grid) == 0 and (pixels is None or pixels.size == 0):
        return None, None
    return pixels, grid


def _check_media(ids, pixels, grid, token_id, name, cfg: ModelConfig) -> int:
    """Validate one modality; returns its number of merged (LLM) tokens."""
    n_placeholders = int((ids == token_id).sum())
    if (pixels is None) != (grid is None):
        raise ValueError(f"{name}: pixel values and grid_thw must be given together")
    if pixels is None:
        if n_placeholders:
            raise ValueError(f"input_ids hold {n_placeholders} {name} tokens but no {name} pixels")
        return 0
    if pixels.ndim != 2 or pixels.shape[1] != cfg.vision.patch_dim:
        raise ValueError(
            f"{name} pixel values must be (patches, {cfg.vision.patch_dim}), got {pixels.shape}"
        )
    need = int(grid.prod(-1).sum())
    if pixels.shape[0] != need:
        raise ValueError(f"{name} pixel values have {pixels.shape[0]} rows, grid_thw needs {need}")
    n_tokens = int(num_merged_tokens(grid, cfg.vision).sum())
    if n_tokens != n_placeholders:
        raise ValueError(
            f"{name} features and tokens do not match: {n_placeholders} tokens, {n_tokens} features"
        )
    return n_tokens


def prepare_inputs(
    cfg: ModelConfig,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    position_ids=None,
    patch_bucket: int | None = None,
) -> ModelInputs:
    """Build `ModelInputs`. `position_ids=None` computes them with `rope_index`;
    `patch_bucket` pads the patch count up to that size (a multiple of 4)."""
    ids = _array(input_ids, np.int32)
    if ids.ndim != 2 or 0 in ids.shape:
        raise ValueError(f"input_ids must be a non-empty (batch, seq) array, got {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else _array(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    img, img_grid = _media(pixel_values, image_grid_thw)
    vid, vid_grid = _media(pixel_values_videos, video_grid_thw)
    n_img = _check_media(ids, img, img_grid, cfg.image_token_id, "image", cfg)
    _check_media(ids, vid, vid_grid, cfg.video_token_id, "video", cfg)

    if position_ids is None:
        position_ids, _ = rope_index(
            ids,
            config=cfg,
            image_grid_thw=img_grid,
            video_grid_thw=vid_grid,
            second_per_grid_ts=_array(second_per_grid_ts),
            attention_mask=mask,
        )
    position_ids = _array(position_ids, np.int32)
    if position_ids.ndim == 2:  # text-only style ids: same id on all three axes
        position_ids = np.broadcast_to(position_ids, (3, *position_ids.shape))
    if position_ids.shape != (3, *ids.shape):
        raise ValueError(
            f"position_ids must be (3, {ids.shape[0]}, {ids.shape[1]}), got {position_ids.shape}"
        )

    vision = None
    pixels = [p for p in (img, vid) if p is not None]
    if pixels:
        grids = np.concatenate([g for g in (img_grid, vid_grid) if g is not None])
        geom = vision_geometry(grids, cfg.vision)
        rows = np.concatenate(pixels)
        if patch_bucket is not None:
            geom = geom.padded(patch_bucket, cfg.vision.merge_unit)
            rows = np.pad(rows, ((0, patch_bucket - rows.shape[0]), (0, 0)))
        vision = VisionInputs(
            pixel_values=rows,
            window_index=geom.window_index,
            reverse_index=geom.reverse_index,
            window_segments=geom.window_segments,
            frame_segments=geom.frame_segments,
            rotary_pos=geom.rotary_pos,
            window_bound=static_bound(geom.window_segments),
            frame_bound=static_bound(geom.frame_segments),
        )
    return ModelInputs(
        input_ids=ids,
        segment_ids=mask,
        position_ids=np.ascontiguousarray(position_ids),
        num_image_tokens=np.asarray(n_img, np.int32),
        vision=vision,
        right_padded=is_right_padded(mask),
    )
