"""Weight conversion between Hugging Face safetensors and tempura-jax checkpoints."""

from converters.convert import ConvertError, to_hf, to_orbax

__all__ = ["ConvertError", "to_hf", "to_orbax"]
