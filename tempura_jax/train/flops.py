"""Model FLOPs of a training step, for MFU (model FLOPs utilisation).

Counted from the batch that actually ran: 6 x parameters x tokens for the
matmuls (forward + backward) plus the attention score/value products over
each attention segment (causal in the decoder, windows and frames in the
vision tower). Rematerialisation is not counted: MFU measures useful work.
"""

from __future__ import annotations

import numpy as np

from tempura_jax.config import ModelConfig

# Dense bf16 peak FLOP/s per device, by `jax.Device.device_kind` prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H800": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
        if device_kind.startswith(prefix):
            return PEAK_FLOPS[prefix]
    return None


def matmul_params(cfg: ModelConfig) -> tuple[int, int]:
    """(decoder + head, vision tower) weights that multiply every token/patch."""
    t, v = cfg.text, cfg.vision
    hd = t.head_dim
    attn = t.hidden_size * hd * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    mlp = 3 * t.hidden_size * t.intermediate_size
    text = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    v_block = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    merged = v.hidden_size * v.merge_unit
    vision = (
        v.patch_dim * v.hidden_size
        + v.depth * v_block
        + (merged * merged + merged * v.out_hidden_size) / v.merge_unit  # per patch
    )
    return int(text), int(vision)


def _segment_sq(segments: np.ndarray) -> float:
    """Sum over rows and segments (ids >= 0 for vision, > 0 for text) of length^2."""
    total = 0.0
    for row in np.atleast_2d(segments):
        _, counts = np.unique(row[row >= 0], return_counts=True)
        total += float(np.sum(counts.astype(np.float64) ** 2))
    return total


def passes(freeze_vision_tower: bool, freeze_llm: bool, peft=None) -> tuple[float, float]:
    """(decoder, vision) work in forward passes: 3 when trained (forward, input
    and weight gradients), 2 for a frozen decoder that still passes gradients
    back to the merger, 1 for a frozen tower (forward only; the small merger
    is counted with it). With adapters (`peft`, a PeftConfig that is enabled)
    the base takes no weight gradients: 2 for the decoder, 2 for a tower with
    adapters of its own, else 1 (the adapters' own FLOPs are left out)."""
    text = 2.0 if freeze_llm else 3.0
    vision = 1.0 if freeze_vision_tower else 3.0
    if peft is not None and peft.enabled:
        text, vision = min(text, 2.0), min(vision, 2.0 if peft.vision else 1.0)
    return text, vision


def batch_flops(
    batch: dict[str, np.ndarray],
    cfg: ModelConfig,
    text_passes: float = 3.0,
    vision_passes: float = 3.0,
) -> float:
    """Training FLOPs of one micro-batch: each part's forward FLOPs times its
    passes (`passes`), so a frozen part is not counted as trained."""
    t, v = cfg.text, cfg.vision
    text_p, vision_p = matmul_params(cfg)
    seg = batch["segment_ids"]
    tokens = float(np.sum(seg > 0))
    patches = float(np.sum(batch["frame_segments"] >= 0))
    # Causal attention: QK^T and AV, 2 flops per MAC, half the square.
    text_attn = (
        2 * 2 * t.num_attention_heads * t.head_dim * 0.5 * _segment_sq(np.where(seg > 0, seg, -1))
    )
    full = set(v.fullatt_block_indexes)
    per_block = 2 * 2 * v.hidden_size
    vis_attn = per_block * (
        len(full) * _segment_sq(batch["frame_segments"])
        + (v.depth - len(full)) * _segment_sq(batch["window_segments"])
    )
    text_forward = 2 * text_p * tokens + t.num_hidden_layers * text_attn
    vision_forward = 2 * vision_p * patches + vis_attn
    return text_passes * text_forward + vision_passes * vision_forward
