"""What the server does with one chat request, apart from HTTP: fetch and
check its media against the limits, build the Example exactly as
launch/infer.py would (the checkpoint's sampling, stamps and pixel budget),
queue it for a batch (streaming its text as the batch decodes), and turn
the generated ids into text, a finish reason and TEMPURA's parsed fields."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tempura_jax.data import media
from tempura_jax.data.records import Record
from tempura_jax.data.sample import Example, SampleError
from tempura_jax.inference import tasks
from tempura_jax.inference.batcher import Batcher, Job
from tempura_jax.inference.chat_request import ChatRequest
from tempura_jax.inference.infer import Case, Predictor
from tempura_jax.inference.media_input import (
    MediaPolicy,
    RequestError,
    fetch_images,
    fetch_video,
)
from tempura_jax.inference.text_stream import TextStream


@dataclasses.dataclass(frozen=True)
class Limits:
    max_frames: int = 64  # frames the model would see
    max_video_seconds: float = 600.0
    max_tokens: int = 512  # generated tokens per request (also the default)
    max_request_bytes: int = 64 << 20


@dataclasses.dataclass
class Prepared:
    request: ChatRequest
    example: Example
    max_tokens: int
    id: str


@dataclasses.dataclass
class Answer:
    text: str
    tokens: list[int]  # the content ids (stop and pad ids removed)
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    tempura: dict[str, Any]


class Service:
    def __init__(
        self,
        predictor: Predictor,
        model_name: str,
        limits: Limits = Limits(),
        policy: MediaPolicy | None = None,
        batch_wait_s: float = 0.02,
        decode_chunk: int = 8,
    ):
        self.predictor, self.model_name = predictor, model_name
        self.limits, self.policy = limits, policy or MediaPolicy()
        self.sampling = predictor.data.sampling
        self.batcher = Batcher(predictor, limits.max_tokens, batch_wait_s, decode_chunk)

    def close(self) -> None:
        self.batcher.close()

    def _check_media(self, path: Path, req: ChatRequest) -> None:
        where = req.wheres[0]
        try:
            tl = media.timeline(path, None, self.sampling)
            if tl.duration > self.limits.max_video_seconds:
                limit = self.limits.max_video_seconds
                raise RequestError(
                    f"{where}: the video is {tl.duration:.1f} s, "
                    f"over the limit max_video_seconds={limit:g}"
                )
            n = len(media.select(tl.times, tl.duration, self.sampling))
        except media.MediaError as e:
            raise RequestError(f"{where}: bad media: {e}") from None
        if n > self.limits.max_frames:
            raise RequestError(f"{where}: {n} frames, over the limit "
                               f"max_frames={self.limits.max_frames}")  # fmt: skip

    def _record(self, req: ChatRequest, path: Path, rid: str) -> Record:
        if req.task == "free":
            return Record(source=rid, media=str(path), turns=req.turns, system=req.system)
        case = Case(video=str(path), task=req.task, query=req.query, mask=req.mask, id=rid)
        rec = self.predictor.record(case)
        return dataclasses.replace(rec, system=req.system) if req.system is not None else rec

    def prepare(self, req: ChatRequest) -> Prepared:
        """Fetch the media, check the limits, build the Example (blocking: media decode)."""
        if req.model not in (None, self.model_name):
            raise RequestError(f"field 'model': unknown model {req.model!r}; "
                               f"this server has {self.model_name!r}")  # fmt: skip
        max_tokens = req.max_tokens or self.limits.max_tokens
        if max_tokens > self.limits.max_tokens:
            raise RequestError(f"field 'max_tokens': {max_tokens} is over the limit "
                               f"max_tokens={self.limits.max_tokens}")  # fmt: skip
        if req.kind == "image" and len(req.urls) > self.limits.max_frames:
            raise RequestError(f"messages: {len(req.urls)} images (frames), over the limit "
                               f"max_frames={self.limits.max_frames}")  # fmt: skip
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        work = Path(tempfile.mkdtemp(prefix="tempura-serve-"))
        try:
            if req.kind == "video":
                path = fetch_video(req.urls[0], self.policy, work, req.wheres[0])
            else:
                path = fetch_images(list(req.urls), self.policy, work, list(req.wheres))
            self._check_media(path, req)
            kind = "masked" if req.task == "masked" else "free"
            try:
                example = self.predictor.builders[kind].build(self._record(req, path, rid))
            except SampleError as e:
                raise RequestError(f"{req.wheres[0]}: {e.reason}: {e.detail}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Prepared(req, example, max_tokens, rid)

    def text_stream(self, prep: Prepared) -> TextStream:
        p = self.predictor
        return TextStream(p.tok.decode, p.sampling.stop_ids, prep.request.stop)

    def submit(
        self, prep: Prepared, on_text: Callable[[str], None] | None = None
    ) -> tuple[Future, TextStream]:
        """Queue the request; the future gets (ids, batch size). `on_text` (from
        the batcher's thread) gets each new piece of final text as it decodes;
        the TextStream says what it was sent. With stop strings the request
        leaves its batch at the first one."""
        req = prep.request
        text = self.text_stream(prep)

        def watch(row: list[int]) -> bool:
            delta = text.feed(row)
            if delta and on_text is not None:
                on_text(delta)
            return text.stopped

        streams = on_text is not None or bool(req.stop)
        job = Job(prep.example, prep.max_tokens, req.temperature, req.top_p, req.seed,
                  watch if streams else None)  # fmt: skip
        return self.batcher.submit(job), text

    def answer(self, prep: Prepared, row: list[int], batch_size: int) -> Answer:
        stops = set(self.predictor.sampling.stop_ids)
        content = [t for t in row if t not in stops]
        text, cut = self.text_stream(prep).text_of(row)
        finish = "stop" if cut or (row and row[-1] in stops) else "length"
        ex = prep.example
        extra = {
            "task": prep.request.task,
            **tasks.get(prep.request.task).parse(text),
            "frame_times": [round(float(t), 3) for t in ex.times],
            "duration": round(ex.duration, 3),
            "batch_size": batch_size,
            "token_ids": content,
        }
        return Answer(text, content, finish, ex.num_tokens, extra)
