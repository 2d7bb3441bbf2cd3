"""Qwen2.5-VL for conditional generation, in Flax NNX.

Attribute names follow the HF hub tensor names (`visual`, `model`, `lm_head`)
so the weight table in `tempura_jax.params` reads like the checkpoint.
`forward`/`logits` are pure array functions for jitted training code;
`__call__` is the user-facing API taking the HF processor's outputs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tempura_jax.config import ModelConfig
from tempura_jax.model.inputs import ModelInputs, prepare_inputs
from tempura_jax.model.layers import Dense
from tempura_jax.model.text import TextModel
from tempura_jax.model.vision import VisionTower
from tempura_jax.positions import rope_deltas


@dataclasses.dataclass
class ModelOutput:
    logits: jax.Array  # (B, S, vocab) float32
    rope_deltas: np.ndarray  # (B, 1)


class Qwen2_5_VL(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.config = cfg
        self.visual = VisionTower(cfg, rngs)
        self.model = TextModel(cfg, rngs)
        t = cfg.text
        self.lm_head = (
            None
            if t.tie_word_embeddings
            else Dense(
                (t.hidden_size,),
                (t.vocab_size,),
                ("embed", "vocab"),
                bias=False,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )
        )

    def embed(self, inputs: ModelInputs) -> jax.Array:
        """Token embeddings with vision features scattered into placeholder slots.

        Image features fill image tokens in order, video features (stored after
        the image ones) fill video tokens; gathers keep every shape static.
        Vision inputs are either flat (all samples' patches in one sequence) or
        batched (a leading batch axis, one sample per row: what the data
        pipeline emits, so the batch axis shards like the text).
        """
        cfg = self.config
        x = self.model.embed(inputs.input_ids, cfg.compute_dtype)
        if inputs.vision is None:
            return x
        if inputs.vision.pixel_values.ndim == 3:
            feats = self.visual(inputs.vision).astype(x.dtype)  # (B, M, D)
            rows, n_img = inputs.input_ids, jnp.reshape(inputs.num_image_tokens, (-1, 1))
        else:
            feats = self.visual(inputs.vision).astype(x.dtype)[None]  # (1, M, D)
            rows, n_img = inputs.input_ids.reshape(1, -1), inputs.num_image_tokens
        is_img, is_vid = rows == cfg.image_token_id, rows == cfg.video_token_id
        img_rank = jnp.cumsum(is_img, axis=1) - 1
        vid_rank = jnp.cumsum(is_vid, axis=1) - 1 + n_img
        index = jnp.clip(jnp.where(is_img, img_rank, vid_rank), 0, feats.shape[1] - 1)
        picked = jnp.take_along_axis(feats, index[..., None], axis=1)
        x = jnp.where((is_img | is_vid)[..., None], picked, x.reshape(*rows.shape, -1))
        return x.reshape(inputs.input_ids.shape + (x.shape[-1],))

    def forward(self, inputs: ModelInputs) -> jax.Array:
        """Final hidden states (B, S, hidden) after the last norm."""
        return self.model(
            self.embed(inputs),
            inputs.position_ids,
            inputs.segment_ids,
            inputs.right_padded,
            inputs.text_bound,
        )

    def head_weight(self) -> jax.Array:
        """(hidden, vocab): the output projection, shared with the embedding when tied."""
        if self.lm_head is None:
            return self.model.embed_tokens[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits; the matmul accumulates in float32 for either head."""
        w = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("bsd,dv->bsv", hidden, w, preferred_element_type=jnp.float32)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        pixel_values_videos=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
        position_ids=None,
    ) -> ModelOutput:
        """HF-style call. `position_ids=None` computes the original Qwen2.5-VL ids."""
        cfg = self.config
        inputs = prepare_inputs(
            cfg,
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            pixel_values_videos,
            video_grid_thw,
            second_per_grid_ts,
            position_ids,
        )
        deltas = rope_deltas(inputs.position_ids, inputs.segment_ids)
        return ModelOutput(logits=forward_logits(self, inputs), rope_deltas=deltas)


@nnx.jit
def forward_logits(model: Qwen2_5_VL, inputs: ModelInputs) -> jax.Array:
    """Jitted once per input shape and rounded vision segment bounds; grid values
    live in the arrays, not the trace."""
    return model.logits(model.forward(inputs))
