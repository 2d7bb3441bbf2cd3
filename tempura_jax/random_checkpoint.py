"""Random-weight HF checkpoints of any Qwen2.5-VL shape, written tensor by
tensor (no download, bounded memory): for benchmarks and the offline demo."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from tempura_jax.config import ModelConfig, to_hf_dict
from tempura_jax.io.hf_checkpoint import write_hf_weights
from tempura_jax.params import param_table

DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}


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
    np_dtype = DTYPES[dtype]
    infos = [(s.hf_name, np_dtype, s.hf_shape) for s in param_table(cfg)]
    rng = np.random.default_rng(seed)

    def arrays():
        for name, _, shape in infos:
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
                yield np.ones(shape, np_dtype)
            elif name.endswith(".bias"):
                yield np.zeros(shape, np_dtype)
            else:
                std = 1.0 if "embed_tokens" in name else float(np.prod(shape[1:])) ** -0.5
                yield (rng.standard_normal(shape, dtype=np.float32) * std).astype(np_dtype)

    files = write_hf_weights(out, infos, arrays(), max_shard_bytes)
    return sum(f.stat().st_size for f in files)
