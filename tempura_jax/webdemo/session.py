"""What the web demo runs: a Predictor (a given checkpoint, the trained demo
model if `workdir/demo` has one, else the tiny random demo model written
offline), the demo videos with their ground-truth events, and one request
turned into the stamped frames the model saw, its answer and parsed events.
No Gradio here: the page (ui.py) only lays these out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from tempura_jax.data.events import parse_events
from tempura_jax.data.processor import patchify
from tempura_jax.data.records import load_records
from tempura_jax.inference import infer, tasks
from tempura_jax.inference.generate import SamplingConfig

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


@dataclasses.dataclass(frozen=True)
class DemoResult:
    answer: str
    parsed: dict[str, Any]  # the task's parsed fields (events, windows, highlights)
    truth: list[list[Any]]  # ground truth [start, end, caption]; [] for uploads
    frames: list[np.ndarray]  # the stamped frames the model saw (H, W, 3) uint8
    times: list[float]  # each frame's seconds
    duration: float
    mask: tuple[float, float] | None


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

    def run(
        self, video: str, task: str, query: str = "", mask: tuple[float, float] | None = None
    ) -> DemoResult:
        """`video`: a demo video's name or the path of a video file (an upload).
        Bad input (unknown video, a task without its query or mask, unreadable
        media) raises ValueError with the reason."""
        demo = self.videos.get(video)
        path = Path(demo.path) if demo is not None else Path(video)
        if demo is None and not path.is_file():
            raise ValueError(f"video: no demo video or file {video!r}; demo: {sorted(self.videos)}")
        case = infer.Case(video=str(path), task=task, query=query,
                          mask=tuple(mask) if mask else None, id="demo")  # fmt: skip
        builder = self.predictor.builders["masked" if task == "masked" else "free"]
        record = self.predictor.record(case)
        try:
            frames, times, duration = builder.frames(record, resize=True)
        except ValueError as e:  # SampleError: unreadable or unusable media
            raise ValueError(f"video {path.name}: {e}") from None
        cfg = self.predictor.data
        pixels, grid = patchify(np.stack(frames), cfg.pixels, cfg.as_video)
        example = builder.assemble(record, pixels, grid, times, duration)
        answer = self.predictor.decode(self.predictor.generate_tokens([example])[0])
        return DemoResult(
            answer=answer,
            parsed=tasks.get(task).parse(answer),
            truth=demo.events if demo is not None else [],
            frames=list(frames),
            times=[float(t) for t in times],
            duration=float(duration),
            mask=case.mask,
        )
