"""`--model tempura_jax`: a tempura-jax checkpoint as an lmms-eval model.

    lmms-eval --model tempura_jax --model_args checkpoint=CKPT,max_new_tokens=64,fps=1 \\
        --batch_size 8 --tasks videomme

The batch size is lmms-eval's own `--batch_size` (its CLI passes it to every
model, so it cannot also be a model_arg). Requests go through the Predictor
(`tempura_jax.inference.infer`): the checkpoint's own
frame sampling, stamps, pixel budget, visual mode and system prompt, in fixed
shape batches. `fps`, `num_frames`, `max_frames`, `min_pixels` and `max_pixels`
override the checkpoint's data config; `overrides="k=v k=v"` sets any other
DataConfig key. `max_new_tokens`, `temperature`, `top_p` override every task's
generation settings (`seed` seeds sampling). The task's prompt (`ctx`) is the
user turn after the video.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Any

import numpy as np
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from tempura_jax.data.records import Record
from tempura_jax.data.sample import ExampleBuilder, SampleError
from tempura_jax.inference import infer
from tempura_jax.inference.generate import SamplingConfig

log = logging.getLogger(__name__)

# model_args -> DataConfig keys
_DATA_ARGS = {
    "fps": "sampling.fps",
    "num_frames": "sampling.num_frames",
    "max_frames": "sampling.max_frames",
    "min_pixels": "pixels.min_pixels",
    "max_pixels": "pixels.max_pixels",
}
# what lmms-eval's CLI passes to every model besides --model_args
_HARNESS_ARGS = {"device", "max_batch_size"}


def data_overrides(args: dict[str, Any], checkpoint: str) -> list[str]:
    """DataConfig `key=value` overrides from model_args. A lone `max_pixels`
    below the checkpoint's `min_pixels` lowers that minimum with it."""
    args = {k: v for k, v in args.items() if v is not None}
    if "max_pixels" in args and "min_pixels" not in args:
        data, _ = infer.checkpoint_setup(checkpoint)
        args["min_pixels"] = min(data.pixels.min_pixels, int(args["max_pixels"]))
    # each override is checked on its own: a lower minimum goes first
    order = sorted(args, key=lambda k: k != "min_pixels")
    return [f"{_DATA_ARGS[k]}={args[k]}" for k in order]


def _video(visuals: Any, where: str) -> str:
    """The one video path a request carries (what the Predictor reads)."""
    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    paths = [v for v in items if isinstance(v, str)]
    if len(paths) != 1 or len(items) != 1:
        kinds = ", ".join(type(v).__name__ for v in items) or "none"
        raise ValueError(f"{where}: tempura_jax answers about exactly one video path, got {kinds}")
    return paths[0]


def _cut(text: str, until: list[str]) -> str:
    """The answer up to the first stop string."""
    ends = [text.find(u) for u in until if u and u in text]
    return text[: min(ends)] if ends else text


class TempuraJax(lmms):
    """One Predictor over the checkpoint; requests grouped by their sampling settings."""

    def __init__(
        self,
        checkpoint: str,
        batch_size: int | str = 1,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int = 0,
        tokenizer: str | None = None,
        dtype: str | None = None,
        attention: str = "xla",
        overrides: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        data_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _DATA_ARGS}
        unknown = sorted(set(kwargs) - _HARNESS_ARGS)
        if unknown:
            known = ["checkpoint", "max_new_tokens", "temperature", "top_p", "seed", "tokenizer"]
            known += ["dtype"]
            known += ["attention", "overrides", *_DATA_ARGS]
            raise ValueError(f"tempura_jax: unknown model_args {unknown}; known: {known}")
        try:
            self.batch_size_per_gpu = int(batch_size)
        except ValueError:
            msg = f"tempura_jax: batch_size must be an integer, got {batch_size!r}"
            raise ValueError(msg) from None
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens is not None else None
        self.temperature = float(temperature) if temperature is not None else None
        self.top_p = float(top_p) if top_p is not None else None
        self.predictor = infer.load(
            checkpoint,
            tokenizer=tokenizer,
            data_overrides=[*data_overrides(data_args, checkpoint), *str(overrides).split()],
            batch_size=self.batch_size_per_gpu,
            dtype=dtype,
            attention_impl=attention,
        )
        self.base_sampling = dataclasses.replace(self.predictor.sampling, seed=int(seed))
        self._scorer: ExampleBuilder | None = None

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _sampling(self, gen_kwargs: dict[str, Any]) -> SamplingConfig:
        """The task's budget and, when it samples, its temperature and top_p
        (greedy otherwise); model_args' max_new_tokens, temperature and top_p win."""
        budget = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens") or 256)
        sample = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature") or 0) > 0
        temperature = float(gen_kwargs["temperature"]) if sample else 0.0
        top_p = float(gen_kwargs.get("top_p") or 1.0) if sample else 1.0
        return dataclasses.replace(
            self.base_sampling,
            max_new_tokens=budget,
            temperature=self.temperature if self.temperature is not None else temperature,
            top_p=self.top_p if self.top_p is not None else top_p,
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[SamplingConfig, list[tuple[int, infer.Case, list[str]]]] = defaultdict(list)
        for i, req in enumerate(requests):
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            where = f"{task}/{split} doc {doc_id}"
            video = _video(doc_to_visual(self._doc(task, split, doc_id)), where)
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            case = infer.Case(video=video, task="free", query=ctx, id=str(i))
            groups[self._sampling(gen_kwargs)].append((i, case, until))
        failed = 0
        for sampling, items in groups.items():
            self.predictor.sampling = sampling
            stops = {case.id: until for _, case, until in items}
            for pred in self.predictor.run([case for _, case, _ in items]):
                if pred.error:  # scored as a wrong answer, as an unreadable video would be
                    failed += 1
                    log.warning("tempura_jax: %s: %s", pred.video, pred.error)
                answers[int(pred.id)] = _cut(pred.answer or "", stops[pred.id])
        self.predictor.sampling = self.base_sampling
        if failed:
            log.warning("tempura_jax: %d of %d requests had unusable media", failed, len(requests))
        return [a or "" for a in answers]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | video, context) from the model's logits, and
        whether greedy decoding would produce it; one forward per request."""
        return [self._loglikelihood(*req.args) for req in requests]

    def _loglikelihood(self, ctx, continuation, doc_to_visual, doc_id, task, split):
        doc = self._doc(task, split, doc_id)
        target = continuation(doc) if callable(continuation) else continuation
        where = f"{task}/{split} doc {doc_id}"
        if isinstance(target, list):
            raise ValueError(f"{where}: one continuation per request, got {len(target)}")
        p = self.predictor
        if self._scorer is None:
            self._scorer = ExampleBuilder(p.data, p.tok, p.model.config, generation=False)
        video = _video(doc_to_visual(doc), where)
        record = Record(
            source=where,
            media=video,
            turns=(("user", f"<video>\n{ctx}"), ("assistant", str(target))),
        )
        try:
            ex = self._scorer.build(record)
        except SampleError as e:
            raise ValueError(f"{where}: {e}") from None
        if ex.as_video:
            vision = {"pixel_values_videos": ex.pixel_values, "video_grid_thw": ex.grid_thw}
            vision["second_per_grid_ts"] = ex.second_per_grid_ts
        else:
            vision = {"pixel_values": ex.pixel_values, "image_grid_thw": ex.grid_thw}
        out = p.model(ex.input_ids[None], **vision, position_ids=ex.position_ids[:, None])
        logits = np.asarray(out.logits[0, :-1], np.float64)
        labels = ex.labels[1:]
        # The reply's labels end with <|im_end|>: the continuation is the rest.
        rows = np.flatnonzero(labels >= 0)[:-1]
        logp = logits[rows] - logits[rows].max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        picked = labels[rows]
        total = float(logp[np.arange(len(rows)), picked].sum())
        return total, bool((logits[rows].argmax(-1) == picked).all())

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "tempura_jax: multi-round generation (generate_until_multi_round) is not supported; "
            "the model answers one user turn about one video"
        )
