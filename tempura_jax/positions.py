"""3D (temporal, row, column) rotary position ids, computed on the host.

Original Qwen2.5-VL semantics (transformers 4.x `get_rope_index`):

* text tokens: all three ids equal, +1 per token;
* a vision block whose placeholder tokens start after text ending at id s-1
  gets temporal = s + floor(i * second_per_grid_t * tokens_per_second) for
  video slice i (0 for images), row = s + merged row, column = s + merged col;
* text after a vision block continues at (max id so far) + 1.

transformers 5.x restarts text after a video at s + max(h, w)/2 and 4.5x
truncates `second_per_grid_t` to an integer before multiplying; the released
weights were trained with the semantics above, which is what this follows.

TEMPURA's per-frame mode needs nothing special here: every frame is its own
image block, so each frame gets one temporal id and the next frame starts
max(h, w)/2 + 2 positions later (the 2 are the end/start tokens).
"""

from __future__ import annotations

import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.model.vision_geometry import grid_array


def vision_block_positions(
    start: int, grid_thw: np.ndarray, merge: int, temporal_step: float
) -> np.ndarray:
    """(3, t*h*w/merge^2) ids of one vision block whose first id is `start`."""
    t, h, w = (int(x) for x in grid_thw)
    lh, lw = h // merge, w // merge
    # float32 products, truncated, exactly as the original torch code computed them.
    steps = np.arange(t, dtype=np.float32) * np.float32(temporal_step)
    t_ids = np.repeat(steps.astype(np.int64), lh * lw)
    h_ids = np.tile(np.repeat(np.arange(lh), lw), t)
    w_ids = np.tile(np.arange(lw), t * lh)
    return np.stack([t_ids, h_ids, w_ids]) + start


def rope_index(
    input_ids,
    *,
    config: ModelConfig,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns position ids (3, B, S) and rope deltas (B, 1), int32.

    Grids are consumed in order across the batch (images and videos each in
    their own order), as the HF processor emits them. Padding positions
    (attention_mask == 0) get id 1, like HF; delta = max id + 1 - S.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or 0 in ids.shape:
        raise ValueError(f"input_ids must be a non-empty (batch, seq) array, got {ids.shape}")
    mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask) != 0
    merge = config.vision.spatial_merge_size
    grids = {
        config.image_token_id: grid_array(image_grid_thw, merge, "image_grid_thw"),
        config.video_token_id: grid_array(video_grid_thw, merge, "video_grid_thw"),
    }
    n_videos = len(grids[config.video_token_id])
    spg = (
        np.ones(n_videos, np.float32)
        if second_per_grid_ts is None
        else np.asarray(second_per_grid_ts, np.float32).reshape(-1)
    )
    if len(spg) != n_videos:
        raise ValueError(f"{len(spg)} second_per_grid_ts for {n_videos} videos")
    tps = np.float32(config.vision.tokens_per_second)
    used = {config.image_token_id: 0, config.video_token_id: 0}
    names = {config.image_token_id: "image", config.video_token_id: "video"}

    b, s = ids.shape
    positions = np.ones((3, b, s), np.int64)
    for row in range(b):
        tokens = ids[row][mask[row]]
        pad_at = np.flatnonzero(np.isin(tokens, list(grids)))
        parts, next_id, st = [], 0, 0
        while True:
            pad_at = pad_at[pad_at >= st]
            if pad_at.size == 0:
                break
            ed = int(pad_at[0])
            kind = int(tokens[ed])
            k = used[kind]
            if k >= len(grids[kind]):
                raise ValueError(
                    f"sample {row}: more {names[kind]} blocks in input_ids than "
                    f"{names[kind]}_grid_thw rows ({len(grids[kind])})"
                )
            grid = grids[kind][k]
            used[kind] += 1
            n_tok = int(grid.prod()) // merge**2
            block = tokens[ed : ed + n_tok]
            if block.size != n_tok or (block != kind).any():
                raise ValueError(
                    f"sample {row}: {names[kind]} {k} at token {ed} needs {n_tok} "
                    f"consecutive placeholder tokens for grid {grid.tolist()}"
                )
            parts.append(np.broadcast_to(np.arange(ed - st) + next_id, (3, ed - st)))
            step = float(spg[k] * tps) if kind == config.video_token_id else 0.0
            vis = vision_block_positions(next_id + ed - st, grid, merge, step)
            parts.append(vis)
            next_id = int(vis.max()) + 1
            st = ed + n_tok
        parts.append(np.broadcast_to(np.arange(len(tokens) - st) + next_id, (3, len(tokens) - st)))
        positions[:, row, mask[row]] = np.concatenate(parts, axis=1)
    for kind, grid in grids.items():
        if used[kind] != len(grid):
            raise ValueError(
                f"{names[kind]}_grid_thw has {len(grid)} rows but input_ids hold "
                f"{used[kind]} {names[kind]} blocks"
            )
    positions = positions.astype(np.int32)
    return positions, rope_deltas(positions, mask)


def rope_deltas(position_ids: np.ndarray, attention_mask) -> np.ndarray:
    """(B, 1): max id over real tokens + 1 - S; decoding continues at S + delta.

    HF takes the max over padding too in its text-only path (padding ids are 1),
    which differs only for a row with a single real token; this is the consistent rule.
    """
    mask = np.asarray(attention_mask) != 0
    top = np.where(mask[None], position_ids, -1).max(axis=(0, 2))
    return (top + 1 - position_ids.shape[-1]).astype(np.int32)[:, None]
