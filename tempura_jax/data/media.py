"""Reading sampled frames, with their times in seconds, from videos and frame folders.

Frame times come from the container (presentation timestamps), so variable
frame rate videos are sampled at the right moments. A `clip` restricts
reading to [start, end) seconds and makes the clip behave as a video of its
own: its first instant is time 0.

Sampling picks, for each target time, the frame on screen at that time (the
last frame whose time is <= the target); repeated picks collapse to one.
Decoding is one sequential pass that converts only the picked frames to RGB.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tempura_jax.overrides import option

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
FRAME_NAME = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)
_EPS = 1e-6


class MediaError(ValueError):
    """A video or frame folder that cannot be read; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How frames are picked. `num_frames` (uniform N, TinyLLaVA-Video style)
    overrides `fps` (TEMPURA: 1 FPS). A video that yields more than
    `max_frames` is handled by `too_long`: "uniform" spreads `max_frames` over
    the whole clip (a lower effective fps), "head" keeps the first ones (for
    inference on a prefix), "error" rejects the video."""

    fps: float = option(1.0, "frames sampled per second (TEMPURA: 1)")
    num_frames: int | None = option(
        None, "sample N frames uniformly instead (TinyLLaVA-Video); overrides fps"
    )
    max_frames: int = option(64, "most frames per video; more are handled by too_long")
    min_frames: int = option(
        2, "fewest frames a sample may be cut to when it does not fit max_seq_len"
    )
    too_long: str = option(
        "uniform", "uniform: spread max_frames over the clip; head: keep the first; error: reject"
    )
    folder_fps: float = option(1.0, "the rate at which a frame folder's <idx>.jpg were stored")
    decode_threads: int = option(1, "decoder threads per video")
    skip_nonref: bool = option(True, "let the decoder drop unsampled non-reference frames (exact)")

    def __post_init__(self):
        if self.num_frames is None and not self.fps > 0:
            raise ValueError(f"sampling fps must be > 0, got {self.fps}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.max_frames < 1 or self.min_frames < 1 or self.min_frames > self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self}")
        if self.too_long not in ("uniform", "head", "error"):
            raise ValueError(f"too_long must be uniform, head or error, got {self.too_long!r}")
        if not self.folder_fps > 0:
            raise ValueError(f"folder_fps must be > 0, got {self.folder_fps}")


@dataclasses.dataclass(frozen=True)
class Picks:
    """Sampled frames: indices into a Timeline and the time each stands for.
    With fps sampling that time is the sampling tick k/fps (the frame is what
    is on screen then; TEMPURA stamps i/fps); with uniform sampling it is the
    frame's own time."""

    idx: np.ndarray  # (n,) int64, increasing
    times: np.ndarray  # (n,) float64, increasing

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, n: int) -> Picks:
        """n of the picks, spread uniformly (first and last kept)."""
        keep = np.unique(np.linspace(0, len(self.idx) - 1, n).round().astype(np.int64))
        return Picks(self.idx[keep], self.times[keep])


@dataclasses.dataclass(frozen=True)
class Clip:
    """Sampled frames and their times in seconds."""

    frames: list[np.ndarray]  # uint8 H x W x 3, or whatever `on_frame` returned
    times: np.ndarray  # (n,) sample times (Picks.times): stamps, masks, positions
    frame_times: np.ndarray  # (n,) the container's presentation times of the frames
    duration: float  # seconds covered by the source (or clip)
    path: str

    def __len__(self) -> int:
        return len(self.frames)


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Frame times of a source before any pixel is decoded."""

    times: np.ndarray  # (n,) float64 seconds, sorted, relative to the clip start
    keys: np.ndarray  # (n,) source keys: pts for videos, file paths for folders
    keyframes: np.ndarray  # (k,) pts of keyframes (videos; empty for folders)
    duration: float
    height: int
    width: int
    path: str


def select(times: np.ndarray, duration: float, sampling: Sampling) -> Picks:
    """The frames to use and the times they stand for."""
    n = len(times)
    if n == 0:
        return Picks(np.zeros(0, np.int64), np.zeros(0))
    if sampling.num_frames is not None:
        idx = np.unique(np.linspace(0, n - 1, sampling.num_frames).round().astype(np.int64))
        picks = Picks(idx, times[idx])
    else:
        ticks = np.arange(0.0, duration - _EPS, 1.0 / sampling.fps)
        idx = np.searchsorted(times, ticks + _EPS, side="right") - 1
        ok = idx >= 0
        idx, ticks = idx[ok], ticks[ok]
        first = np.unique(idx, return_index=True)[1]  # a repeated frame keeps its first tick
        picks = Picks(idx[first], ticks[first])
    if len(picks) > sampling.max_frames:
        if sampling.too_long == "error":
            raise MediaError(
                f"{len(picks)} frames sampled, more than max_frames={sampling.max_frames}"
            )
        if sampling.too_long == "head":
            picks = Picks(picks.idx[: sampling.max_frames], picks.times[: sampling.max_frames])
        else:
            picks = picks.subset(sampling.max_frames)
    return picks


def _clip_window(times: np.ndarray, clip: tuple[float, float] | None, last_end: float, path):
    start, end = (0.0, math.inf) if clip is None else (float(clip[0]), float(clip[1]))
    if not (0 <= start < end):
        raise MediaError(f"{path}: bad clip [{start}, {end})")
    keep = (times >= start - _EPS) & (times < end - _EPS)
    # A clip starting mid-frame still shows the frame on screen at its start.
    first = np.searchsorted(times, start + _EPS, side="right") - 1
    if first >= 0:
        keep[first] = True
    if not keep.any():
        raise MediaError(f"{path}: clip [{start}, {end}) holds no frames")
    duration = min(end, last_end) - start
    return keep, start, duration


def _open_video(path: str, threads: int):
    """The stream probe decodes keyframes only: a default probe decodes
    several frames (14 ms per 1080p file), and neither pass needs them (the
    geometry comes from the container, the decoder finds its pixel format)."""
    import av

    try:
        container = av.open(path, stream_options=[{"skip_frame": "nonkey"}])
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: cannot open video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.codec_context.thread_count = threads
    return container, stream


def video_timeline(path: str | Path, clip=None, threads: int = 1) -> Timeline:
    """Frame times from the demuxed packets (no decoding)."""
    import av

    path = str(path)
    container, stream = _open_video(path, threads)
    try:
        pts, keyframes = [], []
        last_duration = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise MediaError(f"{path}: packets without timestamps are not supported")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
            last_duration = packet.duration or 0
        # Read every stream field before closing: they live in freed memory after.
        height, width = stream.codec_context.height, stream.codec_context.width
        tb = float(stream.time_base)
        start_time = stream.start_time
    except av.FFmpegError as e:
        raise MediaError(f"{path}: corrupt video ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if not pts:
        raise MediaError(f"{path}: the video has no frames")
    if not width or not height:
        raise MediaError(f"{path}: zero-size frames ({width}x{height})")
    pts = np.unique(np.asarray(pts, np.int64))
    origin = start_time if start_time is not None else int(pts[0])
    times = (pts - origin) * tb
    if last_duration <= 0 and len(times) > 1:
        last_duration_s = float(np.median(np.diff(times)))
    else:
        last_duration_s = last_duration * tb
    keep, start, duration = _clip_window(times, clip, times[-1] + last_duration_s, path)
    return Timeline(
        times=np.maximum(times[keep] - start, 0.0),
        keys=pts[keep],
        keyframes=np.unique(np.asarray(keyframes, np.int64)),
        duration=duration,
        height=height,
        width=width,
        path=path,
    )


def folder_timeline(path: str | Path, clip=None, folder_fps: float = 1.0) -> Timeline:
    """`<idx>.jpg` files, sorted numerically; frame idx is at idx / folder_fps."""
    path = Path(path)
    if not path.is_dir():
        raise MediaError(f"{path}: frame folder not found")
    files = {}
    for f in path.iterdir():
        m = FRAME_NAME.match(f.name)
        if m:
            files[int(m.group(1))] = f
    if not files:
        raise MediaError(f"{path}: no <idx>.jpg frames in the folder")
    idx = np.array(sorted(files), np.int64)
    times = idx / folder_fps
    keep, start, duration = _clip_window(times, clip, times[-1] + 1 / folder_fps, path)
    first = files[int(idx[keep][0])]
    try:
        with Image.open(first) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise MediaError(f"{first}: unreadable frame ({e})") from e
    if not width or not height:
        raise MediaError(f"{first}: zero-size frame")
    return Timeline(
        times=np.maximum(times[keep] - start, 0.0),
        keys=np.array([str(files[int(i)]) for i in idx[keep]], dtype=object),
        keyframes=np.zeros(0, np.int64),
        duration=duration,
        height=height,
        width=width,
        path=str(path),
    )


def timeline(path: str | Path, clip=None, sampling: Sampling = Sampling()) -> Timeline:
    path = Path(path)
    if path.is_dir():
        return folder_timeline(path, clip, sampling.folder_fps)
    if not path.exists():
        raise MediaError(f"{path}: media not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    return video_timeline(path, clip, sampling.decode_threads)


@functools.lru_cache(maxsize=64)
def _rgbx_exact(width: int, height: int, fmt: str, colorspace: int, color_range: int) -> bool:
    """Whether swscale converts such frames to RGBX exactly as to RGB. Not
    always: FFmpeg 7's x86 RGBX path writes garbage into the last columns of
    frames 2 or 4 (mod 16) pixels wide. Checked once per kind of frame, on
    random pixels; a kind that cannot be checked gets plain RGB."""
    import av

    try:
        probe = av.VideoFrame(width, height, fmt)
        probe.colorspace, probe.color_range = colorspace, color_range
        rng = np.random.default_rng(0)
        for plane in probe.planes:
            data = np.frombuffer(plane, np.uint8)
            data[:] = rng.integers(0, 256, data.size, dtype=np.uint8)
        rgb = probe.to_ndarray(format="rgb24")
        return np.array_equal(probe.to_ndarray(format="rgba")[..., :3], rgb)
    except Exception:  # noqa: BLE001 - e.g. a pixel format PyAV cannot build or convert
        return False


def _to_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8: where exact, an RGB view of an RGBX buffer, which PIL
    resizes without a copy (processor.resize_frame)."""
    kind = (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)
    if _rgbx_exact(*kind):
        return frame.to_ndarray(format="rgba")[..., :3]
    return frame.to_ndarray(format="rgb24")


def _decode_video(tl: Timeline, idx: np.ndarray, sampling: Sampling, on_frame: Callable) -> list:
    """Decode the frames at `idx`, in order, calling `on_frame(k, rgb)` on each.

    Exact shortcuts, each checked bit for bit against a full decode:
    - packets of unsampled frames are decoded with `skip_frame=NONREF`, so the
      decoder drops them when no other frame refers to them;
    - when the next sampled frame's keyframe lies beyond the packets read so
      far, the reader drains the decoder (the frames whose packets are in are
      complete: a frame's references precede it in decode order) and seeks to
      that keyframe, instead of decoding the gap and the reorder delay."""
    import av

    targets = [int(tl.keys[i]) for i in idx]
    wanted = {p: k for k, p in enumerate(targets)}
    out: list = [None] * len(idx)
    fed = np.zeros(len(idx), bool)
    container, stream = _open_video(tl.path, sampling.decode_threads)
    ctx = stream.codec_context
    kfs = tl.keyframes

    def keyframe_before(pts: int) -> int | None:
        k = np.searchsorted(kfs, pts, side="right") - 1
        return int(kfs[k]) if k >= 0 else None

    def deliver(frames) -> None:
        for frame in frames:
            j = wanted.get(frame.pts) if frame.pts is not None else None
            if j is not None and out[j] is None:
                out[j] = on_frame(j, _to_rgb(frame))

    first = 0  # the earliest sampled frame whose packet has not been read
    try:
        while first < len(targets):
            keyframe = keyframe_before(targets[first])
            seek_to = keyframe if keyframe is not None else targets[first]
            container.seek(seek_to, stream=stream)
            ctx.flush_buffers()
            reached, skipping, ended = -math.inf, None, True  # reached: largest pts read
            for packet in container.demux(stream):
                if packet.pts is not None:
                    j = wanted.get(packet.pts)
                    skip = sampling.skip_nonref and j is None
                    if skip != skipping:
                        ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                        skipping = skip
                    if j is not None:
                        fed[j] = True
                    reached = max(reached, packet.pts)
                deliver(stream.decode(packet))
                if fed[first]:
                    while first < len(targets) and fed[first]:
                        first += 1
                    if first == len(targets):
                        ended = False
                        break
                    keyframe = keyframe_before(targets[first])
                if keyframe is not None and keyframe != seek_to and keyframe > reached:
                    ended = False
                    break
            if ended:
                break  # the demuxer has flushed the decoder at the end of the stream
            deliver(stream.decode(None))
    except av.FFmpegError as e:
        raise MediaError(f"{tl.path}: corrupt video ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    missing = [float(tl.times[i]) for k, i in enumerate(idx) if out[k] is None]
    if missing:
        raise MediaError(
            f"{tl.path}: truncated or corrupt video, {len(missing)} of {len(idx)} sampled frames "
            f"could not be decoded (first at {missing[0]:.2f} s)"
        )
    return out


def _read_frame(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))  # writable: frames are stamped in place
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MediaError(f"{path}: unreadable frame ({e})") from e
    if arr.size == 0:
        raise MediaError(f"{path}: zero-size frame")
    return arr


def read_clip(
    path: str | Path,
    sampling: Sampling = Sampling(),
    clip: tuple[float, float] | None = None,
    tl: Timeline | None = None,
    picks: Picks | None = None,
    on_frame: Callable | None = None,
) -> Clip:
    """Sampled frames of a video file or frame folder. `tl`/`picks` reuse an
    earlier `timeline`/`select` (e.g. after dropping frames to fit a budget).
    `on_frame(k, rgb)` transforms each frame as soon as it is read (stamp,
    resize), so full-resolution frames never pile up."""
    tl = tl if tl is not None else timeline(path, clip, sampling)
    picks = picks if picks is not None else select(tl.times, tl.duration, sampling)
    if len(picks) == 0:
        raise MediaError(f"{tl.path}: no frames sampled")
    shape = None

    def checked(k: int, frame: np.ndarray):
        nonlocal shape
        shape = shape or frame.shape
        if frame.shape != shape:
            raise MediaError(f"{tl.path}: frames change size: {shape} then {frame.shape}")
        if on_frame is None:  # kept at full size: drop the decoder's fourth byte
            return np.ascontiguousarray(frame)
        return on_frame(k, frame)

    if Path(tl.path).is_dir():
        frames = [checked(k, _read_frame(tl.keys[i])) for k, i in enumerate(picks.idx)]
    else:
        frames = _decode_video(tl, picks.idx, sampling, checked)
    return Clip(
        frames=frames,
        times=picks.times.copy(),
        frame_times=tl.times[picks.idx].copy(),
        duration=tl.duration,
        path=tl.path,
    )
