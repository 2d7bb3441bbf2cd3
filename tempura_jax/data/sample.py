"""One record -> one training example: frames, stamps, masks, pixels, tokens,
labels and 3D positions, all on the host.

Sequence budget: if the record does not fit `max_seq_len`, frames are dropped
first (spread uniformly, keeping the sampled times); a record whose text alone
does not fit, or that would need fewer than `sampling.min_frames` frames, is
rejected. Targets are never cut.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tempura_jax.config import ModelConfig
from tempura_jax.data import media
from tempura_jax.data.chat import chat_tokens, vision_tokens
from tempura_jax.data.config import DataConfig
from tempura_jax.data.events import event_problems, masked_seconds, parse_events
from tempura_jax.data.processor import patchify, resize_frame, target_size
from tempura_jax.data.records import Record
from tempura_jax.data.stamp import stamp
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.positions import rope_index


class SampleError(ValueError):
    """A record that cannot become an example; `reason` is a short category."""

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(f"{source}: {reason}: {detail}")
        self.source, self.reason, self.detail = source, reason, detail


@dataclasses.dataclass
class Example:
    source: str
    input_ids: np.ndarray  # (S,) int32
    labels: np.ndarray  # (S,) int32, IGNORE outside assistant replies
    position_ids: np.ndarray  # (3, S) int32
    pixel_values: np.ndarray  # (P, 1176) float32
    grid_thw: np.ndarray  # (G, 3) int64: one row per frame, or one video row
    second_per_grid_ts: np.ndarray  # (G,) float32; 0 for images
    times: np.ndarray  # (n,) float64 sample times of the frames (Clip.times)
    duration: float
    as_video: bool

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_patches(self) -> int:
        return len(self.pixel_values)


def masked_frames(times: np.ndarray, windows, fps: float) -> np.ndarray:
    """(n,) bool: frames whose time lies in a masked window [s/fps, (e+1)/fps)."""
    out = np.zeros(len(times), bool)
    for w in windows:
        lo, hi = masked_seconds(w, fps)
        out |= (times >= lo - 1e-6) & (times < hi - 1e-6)
    return out


class ExampleBuilder:
    """`tokenizer=None` checks and reads media only (`frames`), for data audits.
    `generation`: the prompt ends with `<|im_start|>assistant\n` (inference;
    records then carry only user turns)."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Tokenizer | None,
        model_cfg: ModelConfig | None,
        generation: bool = False,
    ):
        if tokenizer is not None and model_cfg is not None:
            tokenizer.check(model_cfg)
        self.cfg, self.tok, self.model_cfg = cfg, tokenizer, model_cfg
        self.generation = generation

    def _chat(self, rec: Record, vision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return chat_tokens(self.tok, list(rec.turns), vision, self._system(rec), self.generation)

    def _tokens_per_block(self, n_frames: int, tl: media.Timeline) -> list[int]:
        per_frame = self.cfg.pixels.temporal_patch_size
        th, tw = target_size(tl.height, tl.width, self.cfg.pixels)
        merged = (th // self.cfg.pixels.factor) * (tw // self.cfg.pixels.factor)
        if self.cfg.as_video:
            return [math.ceil(n_frames / per_frame) * merged]
        return [merged] * n_frames

    def _text_length(self, rec: Record) -> int:
        return len(self._chat(rec, np.zeros(0, np.int32))[0])

    def _system(self, rec: Record) -> str | None:
        return rec.system if rec.system is not None else self.cfg.system_prompt

    def _fit(self, rec: Record, tl: media.Timeline, picks: media.Picks) -> media.Picks:
        """Drop frames uniformly until the sequence fits max_seq_len (and, when
        packing, the vision patches fit one packed row)."""
        budget = self.cfg.max_seq_len - self._text_length(rec)
        if budget <= 0:
            raise SampleError(rec.source, "too_long", "the text alone exceeds max_seq_len")
        merge = self.cfg.pixels.merge_size**2
        patch_budget = self.cfg.row_patches if self.cfg.packing else math.inf

        def fits(n):
            blocks = self._tokens_per_block(n, tl)
            return sum(t + 2 for t in blocks) <= budget and merge * sum(blocks) <= patch_budget

        n = len(picks)
        while n > 0 and not fits(n):
            n -= 1
        if n < min(self.cfg.sampling.min_frames, len(picks)):
            limit = f"max_seq_len={self.cfg.max_seq_len}" + (
                f", pack_patches={patch_budget}" if self.cfg.packing else ""
            )
            raise SampleError(
                rec.source,
                "too_long",
                f"only {n} frames fit {limit} (min_frames={self.cfg.sampling.min_frames})",
            )
        return picks.subset(n) if n < len(picks) else picks

    def measure(self, rec: Record) -> tuple[int, int]:
        """(tokens, patches) that `build` will give this record, from the
        container's packet times and the sampling config alone (no pixel is
        decoded): what packing plans rows with. Raises SampleError for the
        records `build` rejects before decoding."""
        cfg = self.cfg
        tl, picks = self._picks(rec)
        self._check_task(rec, tl.duration)
        picks = self._fit(rec, tl, picks)
        if len(picks) == 0:
            raise SampleError(rec.source, "bad_media", f"{tl.path}: no frames sampled")
        blocks = self._tokens_per_block(len(picks), tl)
        ids, _ = self._chat(rec, vision_tokens(self.tok, blocks, cfg.as_video))
        return len(ids), cfg.pixels.merge_size**2 * sum(blocks)

    def _picks(self, rec: Record):
        """The record's timeline and sampled frames; SampleError when the
        media cannot be read."""
        try:
            tl = media.timeline(rec.media, rec.clip, self.cfg.sampling)
            return tl, media.select(tl.times, tl.duration, self.cfg.sampling)
        except media.MediaError as e:
            raise SampleError(rec.source, "bad_media", str(e)) from e

    def _check_task(self, rec: Record, duration: float) -> bool:
        """Returns whether the record is a masked (stage-1) record."""
        task = self.cfg.task
        is_masked = bool(rec.masked) if task == "auto" else task == "masked"
        if task == "masked" and not rec.masked:
            raise SampleError(rec.source, "bad_mask", "no masked_start_end_frame_idxs")
        for w in rec.masked:
            lo, hi = masked_seconds(w, self.cfg.mask_fps)
            if lo >= duration:
                raise SampleError(
                    rec.source,
                    "bad_mask",
                    f"masked window {list(w)} starts at {lo:.1f} s, "
                    f"after the video ({duration:.1f} s)",
                )
        if not is_masked and task in ("auto", "dense"):
            problems = event_problems(
                parse_events(rec.target), duration, self.cfg.event_tolerance, cover=True
            )
            if problems:
                raise SampleError(rec.source, "bad_events", "; ".join(problems[:3]))
        return is_masked

    def frames(
        self, rec: Record, resize: bool = False
    ) -> tuple[list[np.ndarray], np.ndarray, float]:
        """(frames, their sample times, duration): media, task and budget checks,
        then each frame as it is decoded is blanked if masked, stamped and
        (with `resize`) resized, so full-resolution frames never pile up.
        Raises SampleError."""
        cfg = self.cfg
        tl, picks = self._picks(rec)
        is_masked = self._check_task(rec, tl.duration)
        if self.tok is not None:
            picks = self._fit(rec, tl, picks)
        blank = np.zeros(len(picks), bool)
        if is_masked and cfg.blank_masked:
            blank = masked_frames(picks.times, rec.masked, cfg.mask_fps)

        def on_frame(k: int, frame: np.ndarray) -> np.ndarray:
            if blank[k]:
                frame = np.zeros_like(frame)
            if not blank[k] or cfg.stamp_masked:
                frame = stamp(frame, float(picks.times[k]), cfg.stamp, inplace=True)
            return resize_frame(frame, cfg.pixels) if resize else frame

        try:
            clip = media.read_clip(rec.media, cfg.sampling, tl=tl, picks=picks, on_frame=on_frame)
        except media.MediaError as e:
            raise SampleError(rec.source, "bad_media", str(e)) from e
        return clip.frames, clip.times, clip.duration

    def build(self, rec: Record) -> Example:
        frames, times, duration = self.frames(rec, resize=True)
        pixels, grid = patchify(np.stack(frames), self.cfg.pixels, self.cfg.as_video)
        return self.assemble(rec, pixels, grid, times, duration)

    def assemble(self, rec: Record, pixels, grid, times, duration) -> Example:
        cfg, merge = self.cfg, self.cfg.pixels.merge_size**2
        blocks = [int(np.prod(g)) // merge for g in grid]
        vision = vision_tokens(self.tok, blocks, cfg.as_video)
        ids, labels = self._chat(rec, vision)
        if cfg.as_video:
            step = float(np.mean(np.diff(times))) if len(times) > 1 else 1.0 / cfg.sampling.fps
            spg = np.full(len(grid), cfg.pixels.temporal_patch_size * step, np.float32)
            pos, _ = rope_index(
                ids[None], config=self.model_cfg, video_grid_thw=grid, second_per_grid_ts=spg
            )
        else:
            spg = np.zeros(len(grid), np.float32)
            pos, _ = rope_index(ids[None], config=self.model_cfg, image_grid_thw=grid)
        if len(ids) > cfg.max_seq_len:  # guarded by _fit; a mismatch here is a bug
            raise SampleError(rec.source, "too_long", f"{len(ids)} tokens > {cfg.max_seq_len}")
        return Example(
            source=rec.source,
            input_ids=ids,
            labels=labels,
            position_ids=pos[:, 0].astype(np.int32),
            pixel_values=pixels,
            grid_thw=grid,
            second_per_grid_ts=spg,
            times=np.asarray(times, np.float64),
            duration=float(duration),
            as_video=cfg.as_video,
        )
