"""Random-weight HF checkpoints of any Qwen2.5-VL shape, written tensor by
tensor (no download, bounded memory): for benchmarks and the offline demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tempura_jax.config import ModelConfig, to_hf_dict
from tempura_jax.io.hf_checkpoint import write_hf_weights
from tempura_jax.io.safetensors import FLOAT_DTYPES
from tempura_jax.params import param_table


def write_random_hf_checkpoint(
    cfg: ModelConfig,
    out: str | Path,
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    max_shard_bytes: int = 5 * 10**9,
) -> int:
    """Weights ~ N(0, 1/fan_in), norms 1, biases 0. Returns bytes written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_hf_dict(cfg), indent=2))
    np_dtype = FLOAT_DTYPES[dtype]
    specs = param_table(cfg)
    rng = np.random.default_rng(seed)

    def arrays():
        for spec in specs:
            kind, shape = spec.path[-1], spec.hf_shape
            if kind == "scale":
                yield np.ones(shape, np_dtype)
            elif kind == "bias":
                yield np.zeros(shape, np_dtype)
            else:
                std = 1.0 if kind == "embed_tokens" else float(np.prod(shape[1:])) ** -0.5
                yield (rng.standard_normal(shape, dtype=np.float32) * std).astype(np_dtype)

    infos = [(s.hf_name, np_dtype, s.hf_shape) for s in specs]
    files = write_hf_weights(out, infos, arrays(), max_shard_bytes)
    return sum(f.stat().st_size for f in files)
