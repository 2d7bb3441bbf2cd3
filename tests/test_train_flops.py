"""MFU's FLOP count: attention per segment, and each part weighted by its passes."""

import numpy as np
import pytest

from tempura_jax.config import qwen2_5_vl_3b
from tempura_jax.train.flops import batch_flops, matmul_params, passes

CFG = qwen2_5_vl_3b()


def text_only(n: int) -> dict[str, np.ndarray]:
    """One row: a sequence of n tokens, then padding; no vision patches."""
    seg = np.zeros((1, n + 5), np.int32)
    seg[0, :n] = 1
    none = np.full((1, 8), -1, np.int32)
    return {"segment_ids": seg, "frame_segments": none, "window_segments": none}


def vision_only(frames: int, per_frame: int) -> dict[str, np.ndarray]:
    frame = np.repeat(np.arange(frames), per_frame)[None]
    return {
        "segment_ids": np.zeros((1, 4), np.int32),
        "frame_segments": frame,
        "window_segments": frame,  # one window per frame
    }


def test_text_flops_by_hand():
    n, t = 100, CFG.text
    text_p, _ = matmul_params(CFG)
    attn = 2 * 2 * t.num_attention_heads * t.head_dim * 0.5 * n * n
    forward = 2 * text_p * n + t.num_hidden_layers * attn
    assert batch_flops(text_only(n), CFG) == pytest.approx(3 * forward, rel=1e-12)
    # A frozen decoder still passes gradients back: forward and input gradients.
    assert batch_flops(text_only(n), CFG, *passes(False, True)) == pytest.approx(2 * forward)


def test_vision_flops_by_hand_and_frozen_tower():
    v = CFG.vision
    _, vision_p = matmul_params(CFG)
    frames, per = 3, 64
    attn = 2 * 2 * v.hidden_size * v.depth * frames * per * per
    forward = 2 * vision_p * frames * per + attn
    assert batch_flops(vision_only(frames, per), CFG) == pytest.approx(3 * forward, rel=1e-12)
    assert batch_flops(vision_only(frames, per), CFG, *passes(True, False)) == pytest.approx(
        forward
    )


def test_adapters_count_no_weight_gradients_of_the_base():
    """LoRA/QLoRA: the frozen base passes gradients back (input gradients)
    but computes none for its weights; a tower without adapters runs forward
    only (the merger's gradient needs no gradient through the tower)."""
    from tempura_jax.peft.config import PeftConfig

    lora = PeftConfig(method="lora")
    assert passes(False, False, lora) == (2.0, 1.0)
    assert passes(False, False, PeftConfig(method="lora", vision=True)) == (2.0, 2.0)
    assert passes(True, False, PeftConfig(method="qlora", vision=False)) == (2.0, 1.0)
    assert passes(False, False, PeftConfig()) == (3.0, 3.0)  # no adapters: full fine-tuning
