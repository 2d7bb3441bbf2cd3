"""Qwen chat format with the visual placeholder expanded, and loss labels.

Layout (Qwen2-VL's own template, no stray newline before `<|im_end|>`):
`<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{vision}{text}<|im_end|>\\n`
`<|im_start|>assistant\\n{reply}<|im_end|>\\n`. Labels cover each assistant
reply and its `<|im_end|>`; everything else is IGNORE.
"""

from __future__ import annotations

import re

import numpy as np

from tempura_jax.data.tokenizer import Tokenizer

IGNORE = -100
VIDEO_PLACEHOLDER = re.compile(r"\n?<video>\n?")
DEFAULT_SYSTEM = "You are a helpful assistant."


def vision_tokens(tok: Tokenizer, tokens_per_block: list[int], as_video: bool) -> np.ndarray:
    """`<|vision_start|>` + pads + `<|vision_end|>` for each block (frame or video)."""
    pad = tok.video_pad_id if as_video else tok.image_pad_id
    parts = []
    for n in tokens_per_block:
        parts += [tok.vision_start_id, *([pad] * n), tok.vision_end_id]
    return np.asarray(parts, np.int32)


def chat_tokens(
    tok: Tokenizer,
    turns: list[tuple[str, str]],
    vision: np.ndarray,
    system: str | None = DEFAULT_SYSTEM,
    add_generation_prompt: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int32. `turns` are (role, text) with roles
    user/assistant; the single `<video>` in the user text (or the start of the
    first user turn) is replaced by `vision`."""
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []

    def add(x, train: bool = False):
        x = np.asarray(x, np.int32)
        ids.append(x)
        labels.append(x if train else np.full(x.shape, IGNORE, np.int32))

    nl = tok.encode("\n")
    if system is not None:
        add([tok.im_start_id, *tok.encode(f"system\n{system}"), tok.im_end_id, *nl])
    # The video goes where a user turn has `<video>`, else before the first user text.
    placed = not any(VIDEO_PLACEHOLDER.search(t) for r, t in turns if r == "user")
    lead = placed
    for role, text in turns:
        if role == "assistant":
            # The reply is encoded on its own, exactly as generation continues
            # after the `assistant\n` prompt.
            add([tok.im_start_id, *tok.encode("assistant\n")])
            add([*tok.encode(text), tok.im_end_id], train=True)
            add(nl)
            continue
        pieces = VIDEO_PLACEHOLDER.split(text)
        if lead:
            pieces, lead = ["", text], False  # no placeholder anywhere: lead the first turn
        pieces[0] = f"{role}\n{pieces[0]}"  # text between special tokens is encoded whole
        add([tok.im_start_id])
        for i, piece in enumerate(pieces):
            if i:
                add(vision)
                placed = True
            add(tok.encode(piece))
        add([tok.im_end_id, *nl])
    if add_generation_prompt:
        add([tok.im_start_id, *tok.encode("assistant\n")])
    return np.concatenate(ids), np.concatenate(labels)
