"""Host-side (NumPy) geometry of the vision tower for a list of `grid_thw` rows.

Everything that depends on the *values* of `grid_thw` is computed here, so the
jitted tower only sees arrays whose shapes depend on the patch count. This
follows HF's `get_window_index`/`rot_pos_emb` exactly:

* Processor rows come in merge-window order: per frame, merged rows, merged
  columns, then the 2x2 patches of each merged token.
* Window attention: merged tokens are regrouped into windows of
  `window_merged` x `window_merged` (edge windows are smaller); each window is
  one attention segment. Tokens are permuted so each window is contiguous and
  the permutation is undone after the merger.
* Full-attention blocks attend within one temporal slice (HF's `cu_seqlens`
  are per frame, not per video).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tempura_jax.config import VisionConfig
from tempura_jax.ops.block_local import round_bound

PAD_SEGMENT = -1


@dataclasses.dataclass(frozen=True)
class VisionGeometry:
    window_index: np.ndarray  # (M,) merged tokens in window order -> source index
    reverse_index: np.ndarray  # (M,) inverse permutation
    window_segments: np.ndarray  # (N,) per patch, window order
    frame_segments: np.ndarray  # (N,) per patch, window order
    rotary_pos: np.ndarray  # (N, 2) (row, col) patch coordinates, window order
    num_patches: int  # N without padding

    def padded(self, num_patches: int, merge_unit: int) -> VisionGeometry:
        """Pad to a patch-count bucket; padding patches form their own segment."""
        n = self.window_segments.shape[0]
        if num_patches < n or num_patches % merge_unit:
            raise ValueError(f"cannot pad {n} patches to {num_patches}")
        extra = num_patches - n
        m, extra_m = self.window_index.shape[0], extra // merge_unit
        tail = np.arange(m, m + extra_m, dtype=np.int32)
        seg = np.full((extra,), PAD_SEGMENT, np.int32)
        return VisionGeometry(
            window_index=np.concatenate([self.window_index, tail]),
            reverse_index=np.concatenate([self.reverse_index, tail]),
            window_segments=np.concatenate([self.window_segments, seg]),
            frame_segments=np.concatenate([self.frame_segments, seg]),
            rotary_pos=np.concatenate([self.rotary_pos, np.zeros((extra, 2), np.int32)]),
            num_patches=self.num_patches,
        )


def grid_array(grid_thw, merge: int, name: str = "grid_thw") -> np.ndarray:
    """Validated (n, 3) int64 rows; None is an empty list of grids."""
    if grid_thw is None:
        return np.zeros((0, 3), np.int64)
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    if (grid <= 0).any():
        raise ValueError(f"{name} rows must be positive, got {grid.tolist()}")
    if (grid[:, 1:] % merge).any():
        raise ValueError(f"{name} h and w must be multiples of {merge}, got {grid.tolist()}")
    return grid


def vision_geometry(grid_thw: np.ndarray, cfg: VisionConfig) -> VisionGeometry:
    merge, ws = cfg.spatial_merge_size, cfg.window_merged
    grid = grid_array(grid_thw, merge)
    window_index, window_ids, frame_ids, rotary = [], [], [], []
    token_offset = window_offset = frame_offset = 0
    for t, h, w in grid:
        lh, lw = h // merge, w // merge
        tt, ii, jj = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
        tt, ii, jj = tt.ravel(), ii.ravel(), jj.ravel()  # source (processor) order
        nwh, nww = -(-lh // ws), -(-lw // ws)
        win = (tt * nwh + ii // ws) * nww + jj // ws  # window id within this grid
        # Window order: by window, then row-major inside the window (stable sort).
        order = np.lexsort((jj % ws, ii % ws, win))
        window_index.append(order + token_offset)
        window_ids.append(win[order] + window_offset)
        frame_ids.append(tt[order] + frame_offset)
        # Patch coordinates of each merged token's 2x2 block, in window order.
        da, db = np.divmod(np.arange(merge * merge), merge)
        rows = ii[order, None] * merge + da[None, :]
        cols = jj[order, None] * merge + db[None, :]
        rotary.append(np.stack([rows, cols], -1).reshape(-1, 2))
        token_offset += t * lh * lw
        window_offset += t * nwh * nww
        frame_offset += t
    index = np.concatenate(window_index).astype(np.int32)
    unit = merge * merge
    return VisionGeometry(
        window_index=index,
        reverse_index=np.argsort(index).astype(np.int32),
        window_segments=np.repeat(np.concatenate(window_ids), unit).astype(np.int32),
        frame_segments=np.repeat(np.concatenate(frame_ids), unit).astype(np.int32),
        rotary_pos=np.concatenate(rotary).astype(np.int32),
        num_patches=int(index.shape[0] * unit),
    )


def num_merged_tokens(grid_thw: np.ndarray, cfg: VisionConfig) -> np.ndarray:
    """LLM tokens per grid row: t * h * w / merge^2."""
    grid = grid_array(grid_thw, cfg.spatial_merge_size)
    return grid.prod(-1) // cfg.merge_unit


def config_bounds(cfg: VisionConfig, max_frame_patches: int | None) -> tuple[int, int | None]:
    """Static (window, frame) segment bounds for a whole run: a window holds
    at most window_merged^2 merged tokens (edge windows fewer); a frame or
    temporal slice at most `max_frame_patches` (from the pixel budget)."""
    window = round_bound(cfg.window_merged**2 * cfg.merge_unit)
    return window, None if max_frame_patches is None else round_bound(max_frame_patches)
