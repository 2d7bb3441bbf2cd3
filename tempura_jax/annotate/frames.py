"""Video probing, 1-FPS frames, and the static-video filter.

Frames come from `data.media` (the training pipeline's PyAV reader), resized
as they are decoded. The static filter is FineVideo's freezedetect rule done
on decoded frames, without ffmpeg: a second is frozen when less than `noise`
of its pixels changed by more than `pixel_delta` since the previous sampled
frame; a segment of `segment_s` seconds is frozen when it holds a frozen run
of `freeze_s` seconds (scaled down for a shorter last segment); the video is
static when at least `fraction` of its segments are frozen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from tempura_jax.data.media import Clip, Sampling, read_clip, select, timeline
from tempura_jax.overrides import option


@dataclasses.dataclass(frozen=True)
class StaticConfig:
    pixel_delta: float = option(0.04, "a pixel changed if its grey level moved more than this")
    noise: float = option(0.005, "a second is frozen if fewer pixels than this fraction changed")
    segment_s: float = option(60.0, "segment length, seconds (FineVideo: 60)")
    freeze_s: float = option(50.0, "frozen run that makes a segment frozen (FineVideo: 50)")
    fraction: float = option(0.4, "static if at least this share of segments is frozen")


def frames_at(path: str, fps: float, max_frames: int, width: int) -> Clip:
    """Frames sampled at `fps` (at most `max_frames`, spread uniformly beyond),
    resized to `width` pixels wide as they are read; raises MediaError."""
    sampling = Sampling(fps=fps, max_frames=max_frames, too_long="uniform")

    def shrink(_: int, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        height = max(2, round(h * width / w / 2) * 2)
        return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))

    return read_clip(path, sampling, on_frame=shrink)


def probe(path: str, fps: float, max_frames: int) -> dict:
    """Frames that would be sampled, duration and frame size, from the
    container alone (no decoding); raises MediaError."""
    sampling = Sampling(fps=fps, max_frames=max_frames, too_long="uniform")
    tl = timeline(path, None, sampling)
    n = len(select(tl.times, tl.duration, sampling))
    return {"frames": n, "duration": tl.duration, "width": tl.width, "height": tl.height}


def changed_fractions(frames: list[np.ndarray], pixel_delta: float) -> list[float]:
    """Per consecutive pair of frames, the share of pixels whose grey level
    changed by more than `pixel_delta` (0-1)."""
    grey = [f.astype(np.float32).mean(axis=2) / 255.0 for f in frames]
    return [
        float((np.abs(b - a) > pixel_delta).mean())
        for a, b in zip(grey[:-1], grey[1:], strict=False)
    ]


def static_verdict(changes: list[float], times: list[float], cfg: StaticConfig) -> dict:
    """{"static": bool, "frozen_segments": k, "segments": n} from the per-pair
    changes (`changes[i]` between frames i and i+1, at `times[i + 1]`)."""
    if not changes:
        return {"static": True, "frozen_segments": 1, "segments": 1}
    t = np.asarray(times[1:], np.float64)
    frozen = np.asarray(changes) < cfg.noise
    n_seg = max(1, int(np.ceil((t[-1] + 1e-6) / cfg.segment_s)))
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    hits = 0
    for s in range(n_seg):
        inside = (t >= s * cfg.segment_s) & (t < (s + 1) * cfg.segment_s)
        if not inside.any():
            continue
        length = min(cfg.segment_s, float(t[inside][-1] - s * cfg.segment_s) + step)
        need = cfg.freeze_s * length / cfg.segment_s
        run = best = 0
        for f in frozen[inside]:
            run = run + 1 if f else 0
            best = max(best, run)
        hits += best * step >= need
    return {"static": hits >= cfg.fraction * n_seg, "frozen_segments": int(hits), "segments": n_seg}
