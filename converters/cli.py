"""`tempura-convert`: HF safetensors <-> tempura-jax (Orbax) checkpoints."""

from __future__ import annotations

import argparse
import re
import sys
import time

from converters.convert import (
    DEFAULT_SHARD_BYTES,
    FLOAT_DTYPES,
    ConvertError,
    to_hf,
    to_orbax,
    to_peft,
)
from tempura_jax.checkpoint import CheckpointFormatError
from tempura_jax.config import ConfigError
from tempura_jax.io.safetensors import SafetensorsError
from tempura_jax.loading import CheckpointError
from tempura_jax.peft.config import PeftConfigError

USER_ERRORS = (
    ConvertError,
    ConfigError,
    CheckpointError,
    CheckpointFormatError,
    SafetensorsError,
    PeftConfigError,
)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 200MB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tempura-convert",
        description="Convert Qwen2.5-VL weights between Hugging Face safetensors directories and "
        "tempura-jax Orbax checkpoints. Tensors are streamed a layer at a time; output appears "
        "only when the conversion succeeded.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-orbax", help="HF directory -> tempura-jax checkpoint")
    a.add_argument("hf_dir", help="directory with config.json and model.safetensors[.index.json]")
    a.add_argument("ckpt_dir", help="output checkpoint directory")
    a.add_argument(
        "--compress", action="store_true", help="zstd-compress (~20%% smaller, ~1.6x slower)"
    )
    b = sub.add_parser("to-hf", help="tempura-jax checkpoint (converted or a training run) -> HF")
    b.add_argument("ckpt_dir", help="checkpoint step directory, or a run's checkpoint root")
    b.add_argument("hf_dir", help="output HF directory")
    b.add_argument(
        "--dtype", choices=sorted(FLOAT_DTYPES), help="cast tensors (default: as stored)"
    )
    b.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=DEFAULT_SHARD_BYTES,
        help="largest safetensors file, e.g. 5GB (default) or 500MB",
    )
    b.add_argument(
        "--merge-adapters",
        action="store_true",
        help="an adapter run: write its base with the adapters folded in",
    )
    c = sub.add_parser("to-peft", help="adapter run -> Hugging Face PEFT adapter directory")
    c.add_argument("run", help="adapter run: a step directory or the run's checkpoint root")
    c.add_argument("out_dir", help="output directory (adapter_config.json + safetensors)")
    for sp in (a, b, c):
        sp.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "to-orbax":
            out = to_orbax(
                args.hf_dir, args.ckpt_dir, overwrite=args.overwrite, compress=args.compress
            )
        elif args.command == "to-peft":
            out = to_peft(args.run, args.out_dir, overwrite=args.overwrite)
        else:
            out = to_hf(
                args.ckpt_dir,
                args.hf_dir,
                dtype=args.dtype,
                max_shard_bytes=args.max_shard_size,
                overwrite=args.overwrite,
                merge_adapters=args.merge_adapters,
            )
    except USER_ERRORS as e:
        message = " ".join(str(e).split())  # one line, whatever the library wrote
        print(f"tempura-convert: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0
