"""What the web demo runs: a Predictor (a given checkpoint, the trained demo
model if `workdir/demo` has one, else the tiny random demo model written
offline), the demo videos with their ground-truth events, and one request
turned into the stamped frames the model saw, its answer and a timeline."""

from __future__ import annotations

import base64
import dataclasses
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tempura_jax.data.events import parse_events
from tempura_jax.data.processor import patchify
from tempura_jax.data.records import load_records
from tempura_jax.inference import infer, tasks
from tempura_jax.inference.generate import SamplingConfig
from tempura_jax.inference.media_input import MediaPolicy, RequestError, fetch_video
from tempura_jax.webdemo.timeline import timeline_png

# The demo model's frames: the demo config's pixel budget (56 x 84) and sequence budget.
DEMO_OVERRIDES = ("pixels.min_pixels=6272", "pixels.max_pixels=6272", "max_seq_len=1024")


def demo_checkpoint(workdir: Path) -> tuple[Path, str | None, tuple[str, ...]]:
    """(checkpoint, tokenizer, data overrides) for the demo model under `workdir`:
    stage 2's checkpoints if trained, else a tiny random model (written once)."""
    from tempura_jax.config import tiny
    from tempura_jax.data.demo import make_demo_data
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    data = workdir / "data"
    if not (data / "stage2_dense.json").exists():
        make_demo_data(data)
    trained = workdir / "stage2" / "checkpoints"
    if trained.exists() and any(trained.iterdir()):
        return trained, None, ()
    model = workdir / "model"
    if not (model / "config.json").exists():
        write_random_hf_checkpoint(tiny(), model, dtype="float32")
    return model, str(data / "tokenizer"), DEMO_OVERRIDES


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    name: str
    path: str
    events: list[list[Any]]  # ground truth [start, end, caption]


def demo_videos(data: Path) -> list[DemoVideo]:
    records, _, _ = load_records([str(data / "stage2_dense.json")], str(data))
    out = []
    for rec in records:
        if Path(rec.media).suffix == ".mp4":
            events = [[e.start, e.end, e.caption] for e in parse_events(rec.target)]
            out.append(DemoVideo(Path(rec.media).stem, rec.media, events))
    return out


def _jpeg(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class DemoSession:
    def __init__(self, predictor: infer.Predictor, videos: list[DemoVideo]):
        self.predictor, self.videos = predictor, {v.name: v for v in videos}

    @classmethod
    def load(cls, checkpoint: str | None, workdir: Path, max_new_tokens: int) -> DemoSession:
        ckpt, tok, overrides = demo_checkpoint(workdir)
        if checkpoint:
            ckpt, tok, overrides = Path(checkpoint), None, ()
        predictor = infer.load(ckpt, tokenizer=tok, data_overrides=overrides,
                               sampling=SamplingConfig(max_new_tokens=max_new_tokens))  # fmt: skip
        return cls(predictor, demo_videos(workdir / "data"))

    def run(self, video: str, task: str, query: str = "", mask=None) -> dict[str, Any]:
        """`video`: a demo video's name or a `data:` URL (an upload)."""
        demo = self.videos.get(video)
        if demo is None and not video.startswith("data:"):
            raise RequestError(f"video: unknown demo video {video!r}; known: {sorted(self.videos)}")
        work = Path(tempfile.mkdtemp(prefix="tempura-demo-"))
        try:
            if demo is not None:
                path = Path(demo.path)
            else:
                path = fetch_video(video, MediaPolicy(), work, "video")
            case = infer.Case(video=str(path), task=task, query=query,
                              mask=tuple(mask) if mask else None, id="demo")  # fmt: skip
            builder = self.predictor.builders["masked" if task == "masked" else "free"]
            record = self.predictor.record(case)
            try:
                frames, times, duration = builder.frames(record, resize=True)
            except ValueError as e:  # SampleError: unreadable or unusable media
                raise RequestError(f"video: {e}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cfg = self.predictor.data
        pixels, grid = patchify(np.stack(frames), cfg.pixels, cfg.as_video)
        example = builder.assemble(record, pixels, grid, times, duration)
        row = self.predictor.generate_tokens([example])[0]
        answer = self.predictor.decode(row)
        parsed = tasks.get(task).parse(answer)
        truth = demo.events if demo is not None else []
        png = timeline_png(duration, parsed, truth, mask=case.mask)
        return {
            "answer": answer,
            "parsed": parsed,
            "truth": truth,
            "frames": [_jpeg(f) for f in frames],
            "times": [float(t) for t in times],
            "duration": float(duration),
            "timeline": "data:image/png;base64," + base64.b64encode(png).decode(),
        }
