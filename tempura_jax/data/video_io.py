"""Writing videos with PyAV: demo data, tests and benchmarks (CFR or VFR)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 8.0,
    times: Sequence[float] | None = None,
    codec: str | None = None,
    crf: int = 28,
    gop: int | None = None,
) -> None:
    """Encode uint8 RGB frames. `times` (seconds, increasing) makes a variable
    frame rate video; otherwise frame i is at i / fps."""
    import av

    path = Path(path)
    codec = codec or CODECS.get(path.suffix.lower(), "libx264")
    tb = Fraction(1, 1000) if times is not None else Fraction(1, round(fps * 1000)) * 1000
    with av.open(str(path), "w") as container:
        stream = None
        for i, frame in enumerate(frames):
            if stream is None:
                rate = Fraction(round(fps * 1000), 1000)
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                if gop:
                    stream.codec_context.gop_size = gop
                if times is not None:
                    stream.time_base = tb
                    stream.codec_context.time_base = tb
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if times is not None:
                vf.pts = round(times[i] * 1000)
                vf.time_base = tb
            for packet in stream.encode(vf):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
