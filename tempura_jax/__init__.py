"""tempura-jax: TEMPURA temporal reasoning for Qwen2.5-VL in JAX/Flax NNX."""

from tempura_jax.config import ModelConfig, TextConfig, VisionConfig, from_hf_dict, from_hf_json
from tempura_jax.loading import CheckpointError, load_pretrained
from tempura_jax.model.inputs import ModelInputs, prepare_inputs
from tempura_jax.model.qwen2_5_vl import ModelOutput, Qwen2_5_VL, forward_logits
from tempura_jax.positions import rope_index

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "ModelInputs",
    "ModelOutput",
    "Qwen2_5_VL",
    "TextConfig",
    "VisionConfig",
    "forward_logits",
    "from_hf_dict",
    "from_hf_json",
    "load_pretrained",
    "prepare_inputs",
    "rope_index",
]
