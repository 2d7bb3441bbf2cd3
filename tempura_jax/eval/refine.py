"""The reference's optional second pass: a text-only prompt refines each
grounding (VTG_REFINE) or highlight (VHD_REFINE) answer with the same video's
dense caption, made once per video by the same checkpoint.

Grounding (the reference's defaults): first-pass and refined windows are both
widened to at least `min_window` seconds (4), and the final windows are the
first pass's unless it found none (`vtg_first`); `refined` prefers the
refined ones, `vtg` keeps the first pass. Highlights: the refined answer
replaces the first one when it parses to at least one highlight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tempura_jax.data.chat import chat_tokens
from tempura_jax.eval.parsing import parse_highlights, parse_windows
from tempura_jax.inference import tasks
from tempura_jax.inference.generate import generate
from tempura_jax.inference.infer import Case, Predictor
from tempura_jax.model.inputs import prepare_inputs
from tempura_jax.reference_prompts import VHD_REFINE, VTG_REFINE

MODES = ("vtg_first", "refined", "vtg")
SEQ_BUCKET = 128  # text prompts are padded to a multiple of this (one compile per bucket)


def widen(windows: Sequence[Sequence[float]], min_len: float) -> list[list[float]]:
    """Each window at least `min_len` long: grown by half the shortfall on each
    side, the start never below 0 (the rest goes to the end); 2 decimals."""
    out = []
    for s, e in windows:
        s, e = float(s), float(e)
        short = min_len - (e - s)
        if short > 0:
            left = min(short / 2, s)
            s, e = s - left, e + short - left
        out.append([round(s, 2), round(e, 2)])
    return out


def final_windows(first: list, refined: list, mode: str = "vtg_first") -> list:
    if mode not in MODES:
        raise ValueError(f"unknown refine mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "vtg":
        return first
    if mode == "refined":
        return refined or first
    return first or refined


def vtg_prompt(caption: str, query: str, windows: list, min_len: float) -> str:
    shown = "[" + ", ".join(f"[{s:.1f}, {e:.1f}]" for s, e in windows) + "]"
    return VTG_REFINE.format(
        dense_caption=caption, query=query, windows=shown, min_window_duration=min_len
    )


def vhd_prompt(caption: str, query: str, answer: str, duration: float) -> str:
    return VHD_REFINE.format(
        duration=duration, dense_caption=caption, query=query, initial_answer=answer
    )


def text_answers(predictor: Predictor, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Answers to text-only user turns (no video), in the Predictor's
    fixed-size, left-padded batches and with its system prompt and stops."""
    tok, model, b = predictor.tok, predictor.model, predictor.batch_size
    sampling = dataclasses.replace(predictor.sampling, max_new_tokens=max_new_tokens)
    none = np.zeros(0, np.int32)
    system = predictor.data.system_prompt
    stops = set(sampling.stop_ids)
    out: list[str] = []
    for lo in range(0, len(prompts), b):
        chunk = list(prompts[lo : lo + b])
        rows = [chat_tokens(tok, [("user", p)], none, system, True)[0] for p in chunk]
        rows += [rows[0]] * (b - len(rows))
        s = -(-max(len(r) for r in rows) // SEQ_BUCKET) * SEQ_BUCKET
        ids = np.full((b, s), tok.pad_id, np.int32)
        mask = np.zeros((b, s), np.int32)
        for i, r in enumerate(rows):
            ids[i, s - len(r) :], mask[i, s - len(r) :] = r, 1
        gen = generate(model, prepare_inputs(model.config, ids, mask), sampling)
        for row in gen.rows()[: len(chunk)]:
            out.append(tok.decode([t for t in row if t not in stops]).strip())
    return out


def dense_captions(
    predictor: Predictor, cases: Sequence[Case], max_new_tokens: int
) -> dict[str, str]:
    """video -> its dense caption (the `dense` task), one run per distinct video
    (and clip); a video that cannot be read gets an empty caption."""
    firsts: dict[str, Case] = {}
    for c in cases:
        firsts.setdefault(c.video, Case(video=c.video, task="dense", clip=c.clip, id=c.video))
    saved = predictor.sampling
    predictor.sampling = dataclasses.replace(saved, max_new_tokens=max_new_tokens)
    try:
        return {p.id: p.answer or "" for p in predictor.run(list(firsts.values()))}
    finally:
        predictor.sampling = saved


DVC_TOKENS = 2048  # the reference's budgets: dense caption, refinement
REFINE_TOKENS = {"grounding": 1024, "highlight": 256}


def refine(
    predictor: Predictor,
    cases: Sequence[Case],
    answers: Sequence[str | None],
    durations: Sequence[float] | None = None,
    min_window: float = 4.0,
    mode: str = "vtg_first",
    caption_tokens: int | None = None,
    refine_tokens: int | None = None,
) -> list[dict]:
    """Second-pass fields for each (case, first answer): `refine_answer`, the
    caption it saw, and the final `windows` (grounding) or `highlights`.
    Token budgets default to the reference's (DVC_TOKENS, REFINE_TOKENS)."""
    kinds = {next(iter(tasks.get(c.task).parse(""))) for c in cases}  # the answer's field
    if kinds not in ({"windows"}, {"highlights"}):
        raise ValueError(f"refine: cases must all be grounding or all highlight, got {kinds}")
    grounding = kinds == {"windows"}
    if not grounding and durations is None:
        raise ValueError("refine: highlight cases need the video durations")
    final_windows([], [], mode)  # an unknown mode fails before the model runs
    captions = dense_captions(predictor, cases, caption_tokens or DVC_TOKENS)
    prompts, firsts = [], []
    for i, (case, answer) in enumerate(zip(cases, answers, strict=True)):
        caption = captions.get(case.video, "")
        if grounding:
            first = widen(parse_windows(answer), min_window)
            firsts.append(first)
            prompts.append(vtg_prompt(caption, case.query, first, min_window) if caption else "")
        else:
            firsts.append(parse_highlights(answer))
            text = vhd_prompt(caption, case.query, answer or "", durations[i])
            prompts.append(text if caption else "")
    asked = [i for i, p in enumerate(prompts) if p]
    budget = refine_tokens or REFINE_TOKENS["grounding" if grounding else "highlight"]
    replies = dict(
        zip(asked, text_answers(predictor, [prompts[i] for i in asked], budget), strict=True)
    )
    out = []
    for i, case in enumerate(cases):
        reply = replies.get(i, "")
        row = {"refine_answer": reply, "dense_caption": captions.get(case.video, "")}
        if grounding:
            refined = widen(parse_windows(reply), min_window)
            row["windows"] = final_windows(firsts[i], refined, mode)
            row["refine_mode"] = mode
        else:
            refined = parse_highlights(reply)
            row["highlights"] = [list(h) for h in (refined or firsts[i])]
        out.append(row)
    return out
