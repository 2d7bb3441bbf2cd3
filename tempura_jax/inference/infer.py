"""Answers from a checkpoint about videos: the training pipeline's frames,
stamps and pixels, a chat prompt that ends at `assistant\\n`, left-padded
fixed-shape batches, `generate`, and the answer parsed for its task.

A training checkpoint carries its run's data config (sampling, stamps, pixel
budget, visual mode, system prompt), so inference sees frames exactly as
training did. An HF directory gets TEMPURA's defaults (1 FPS, stamped frames).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tempura_jax import checkpoint, overrides
from tempura_jax.data.batching import collate, model_inputs
from tempura_jax.data.config import DataConfig
from tempura_jax.data.events import Event, mask_frame_range
from tempura_jax.data.records import Record
from tempura_jax.data.sample import Example, ExampleBuilder, SampleError
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.inference import tasks
from tempura_jax.inference.generate import (
    Generation,
    SamplingConfig,
    generate,
    generate_chunks,
)

log = logging.getLogger(__name__)


def _pair(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected [start, end] seconds, got {value!r}") from None
    if not 0 <= a < b:
        raise ValueError(f"{where}: expected 0 <= start < end, got {value!r}")
    return a, b


@dataclasses.dataclass(frozen=True)
class Case:
    """One question about one video. `mask` (seconds) is blanked for the
    masked task; `clip` (seconds) cuts the video first."""

    video: str
    task: str = "dense"
    query: str = ""
    mask: tuple[float, float] | None = None
    clip: tuple[float, float] | None = None
    id: str = ""

    def __post_init__(self):
        tasks.get(self.task).text(self.query, self.mask)  # fails early, naming the task

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Case:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
        if not isinstance(raw.get("video"), str):
            raise ValueError(f"{where}: field 'video' must be a path string")
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        task = raw.get("task") or ("free" if raw.get("query") else "dense")
        try:
            return cls(
                video=raw["video"],
                task=task,
                query=str(raw.get("query") or ""),
                mask=_pair(raw.get("mask"), f"{where}: field 'mask'"),
                clip=_pair(raw.get("clip"), f"{where}: field 'clip'"),
                id=str(raw.get("id", "")),
            )
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def read_cases(path: str | Path, base: str | Path | None = None) -> list[Case]:
    """A JSON list of cases; relative video paths are taken from `base`
    (default: the file's folder). A case without an id gets its index."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable cases file ({e})") from e
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of cases")
    root = Path(base) if base is not None else path.parent
    cases = []
    for i, item in enumerate(raw):
        case = Case.from_json(item, f"{path}#{i}")
        video = str(root / case.video) if not Path(case.video).is_absolute() else case.video
        cases.append(dataclasses.replace(case, video=video, id=case.id or str(i)))
    return cases


@dataclasses.dataclass
class Prediction:
    id: str
    video: str
    task: str
    query: str
    answer: str | None  # None when the case could not be run (see `error`)
    parsed: dict[str, Any]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "video": self.video, "task": self.task, "query": self.query}
        out["answer"] = self.answer
        out.update(self.parsed)
        if self.error:
            out["error"] = self.error
        return out


def _meta_config(step: Path) -> dict[str, Any] | None:
    meta = step / "meta" / "metadata"
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text()).get("config")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta}: unreadable run metadata ({e})") from e


def checkpoint_setup(path: str | Path) -> tuple[DataConfig, str | None]:
    """(data config, tokenizer directory) a checkpoint was trained with.
    Training checkpoints record both; an HF directory gets the defaults and
    its own tokenizer files when it has them."""
    path = Path(path)
    if checkpoint.is_checkpoint(path):
        params = checkpoint.OrbaxParams(path)
        saved = _meta_config(params.step)
        data = DataConfig()
        if saved and "data" in saved:
            data = overrides.from_dict(DataConfig, saved["data"], f"{params.step}: config.data")
        tok = params.record.get("tokenizer_dir") or data.tokenizer or None
        return data, tok
    return DataConfig(), str(path) if (path / "tokenizer.json").exists() else None


class Predictor:
    """Runs cases in fixed-size batches (the last one filled with copies), so
    the jitted prefill and decode loop compile once per shape bucket."""

    def __init__(
        self,
        model,
        tokenizer: Tokenizer,
        data: DataConfig,
        sampling: SamplingConfig,
        batch_size: int = 1,
        threads: int = 4,
    ):
        cfg = model.config
        self.model, self.tok, self.batch_size, self.threads = model, tokenizer, batch_size, threads
        self.data = data.replace(task="free", batch_size=batch_size)
        self.builders = {
            kind: ExampleBuilder(self.data.replace(task=kind), tokenizer, cfg, generation=True)
            for kind in ("free", "masked")
        }
        vision = (cfg.image_token_id, cfg.video_token_id)
        markers = (cfg.vision_start_token_id, cfg.vision_end_token_id)
        self.sampling = dataclasses.replace(
            sampling,
            stop_ids=sampling.stop_ids or (tokenizer.im_end_id, tokenizer.pad_id),
            pad_id=tokenizer.pad_id,
            suppress_ids=tuple(sorted({*sampling.suppress_ids, *vision, *markers})),
        )

    def record(self, case: Case) -> Record:
        text = tasks.get(case.task).text(case.query, case.mask)
        masked = ()
        if case.mask is not None and case.task == "masked":
            window = Event(case.mask[0], case.mask[1], "")
            masked = (mask_frame_range(window, self.data.mask_fps),)
        return Record(
            source=case.id or case.video,
            media=str(Path(case.video).absolute()),
            turns=(("user", f"<video>\n{text}"),),
            masked=masked,
            clip=case.clip,
        )

    def example(self, case: Case) -> Example:
        """Raises SampleError (with its reason) for media that cannot be used."""
        builder = self.builders["masked" if case.task == "masked" else "free"]
        return builder.build(self.record(case))

    def _inputs(self, examples: list[Example], rows: int | None):
        """`examples` as one left-padded batch of `rows` (default `batch_size`)
        rows, the rest copies of the first, so every call reuses the compiled
        programs of its shape bucket."""
        n, rows = len(examples), rows or self.batch_size
        if not 0 < n <= rows:
            raise ValueError(f"need 1 to {rows} examples per batch, got {n}")
        batch = collate(examples + [examples[0]] * (rows - n), self.data, self.model.config,
                        self.tok.pad_id)  # fmt: skip
        return dataclasses.replace(model_inputs(left_pad(batch)), right_padded=False)

    def generate_tokens(
        self,
        examples: list[Example],
        sampling: SamplingConfig | None = None,
        rows: int | None = None,
    ) -> list[list[int]]:
        """Each example's generated ids (up to and including its stop id), run as
        one batch of `rows` rows (`_inputs`). `sampling` (default: the
        Predictor's) must keep its stop, pad and suppress ids."""
        inputs = self._inputs(examples, rows)
        return generate(self.model, inputs, sampling or self.sampling).rows()[: len(examples)]

    def generate_chunks(
        self, examples: list[Example], sampling: SamplingConfig, rows: int, chunk: int
    ) -> Iterator[Generation]:
        """`generate_tokens` a decode chunk at a time (`generate.generate_chunks`);
        the Generations' first len(examples) rows are the examples'."""
        return generate_chunks(self.model, self._inputs(examples, rows), sampling, chunk)

    def decode(self, row: list[int]) -> str:
        """A generated row as text, without its stop and pad ids."""
        stops = set(self.sampling.stop_ids)
        return self.tok.decode([t for t in row if t not in stops]).strip()

    def _generate(self, examples: list[Example]) -> list[str]:
        return [self.decode(row) for row in self.generate_tokens(examples)]

    def run(
        self, cases: Sequence[Case], progress: Callable[[int], None] | None = None
    ) -> Iterator[Prediction]:
        """Predictions in case order, a batch at a time. A case whose media
        cannot be read comes back with `error` set and no answer."""
        with ThreadPoolExecutor(self.threads) as pool:
            for lo in range(0, len(cases), self.batch_size):
                chunk = list(cases[lo : lo + self.batch_size])
                built = list(pool.map(_try(self.example), chunk))
                good = [e for e in built if isinstance(e, Example)]
                texts = iter(self._generate(good) if good else [])
                for case, ex in zip(chunk, built, strict=True):
                    if isinstance(ex, Example):
                        text = next(texts)
                        parsed = tasks.get(case.task).parse(text)
                        yield Prediction(case.id, case.video, case.task, case.query, text, parsed)
                    else:
                        log.warning("skipped %s: %s", case.id or case.video, ex)
                        yield Prediction(
                            case.id, case.video, case.task, case.query, None, {}, error=str(ex)
                        )
                if progress:
                    progress(len(chunk))


def _try(fn: Callable[[Case], Example]) -> Callable[[Case], Example | SampleError]:
    def call(case: Case) -> Example | SampleError:
        try:
            return fn(case)
        except SampleError as e:
            return e

    return call


def left_pad(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Move each collated (right-padded) row's padding to its front, as
    generation needs every row to end on its last prompt token."""
    out = dict(batch)
    s = batch["input_ids"].shape[1]
    shift = s - (batch["segment_ids"] != 0).sum(axis=1)
    for key in ("input_ids", "segment_ids", "labels"):
        out[key] = np.stack([np.roll(r, k) for r, k in zip(batch[key], shift, strict=True)])
    pos = batch["position_ids"]
    out["position_ids"] = np.stack(
        [np.roll(pos[:, i], shift[i], axis=-1) for i in range(pos.shape[1])], axis=1
    )
    return out


def load(
    path: str | Path,
    *,
    tokenizer: str | None = None,
    data_overrides: Iterable[str] = (),
    sampling: SamplingConfig | None = None,
    batch_size: int = 1,
    dtype: str | None = None,
    attention_impl: str = "xla",
) -> Predictor:
    """A Predictor for a tempura-jax checkpoint (run root or step) or an HF
    directory. `data_overrides` are DataConfig keys (`sampling.fps=2`)."""
    from tempura_jax.loading import default_compute_dtype, load_pretrained

    data, tok_dir = checkpoint_setup(path)
    data = overrides.apply(data, [o.removeprefix("data.") for o in data_overrides])
    tok_dir = tokenizer or tok_dir
    if not tok_dir:
        raise ValueError(f"{path}: no tokenizer recorded or present; pass a tokenizer directory")
    dtype = dtype or default_compute_dtype()
    model = load_pretrained(path, dtype=dtype, compute_dtype=dtype, attention_impl=attention_impl)
    return Predictor(model, Tokenizer(tok_dir), data, sampling or SamplingConfig(), batch_size)


def add_model_arguments(p) -> None:
    """The command-line flags of `load` (launch/infer.py and launch/eval.py)."""
    p.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", help="float32 or bfloat16 (default: float32 on CPU)")
    p.add_argument("--attention", default="xla", help="attention impl (auto, xla, ...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data config keys")


def load_from_arguments(args, sampling: SamplingConfig) -> Predictor:
    return load(
        args.checkpoint,
        tokenizer=args.tokenizer,
        data_overrides=args.overrides,
        sampling=sampling,
        batch_size=args.batch_size,
        dtype=args.dtype,
        attention_impl=args.attention,
    )
