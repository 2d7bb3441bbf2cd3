"""tempura-compile: will this config fit that slice? Compile the trainer's
step (or the serving programs) ahead of time for a TPU slice or GPU machine
this machine does not have, and report per-device memory, fit and FLOPs.

    tempura-compile --config qwen2_5_vl_3b --stage 1 --topology v5e-8 \\
        --shape 8192,20160 --out bench/results/compile_qwen2_5_vl_3b_v5e-8.json

Same --config, --stage and key=value overrides as launch/train.py. The model
comes from model.init's config.json when it exists, else from --model (a
preset: tempura_jax.config.PRESETS), else the preset named like the config.
Exit status: 0 fits, 2 compiles but does not fit, 1 bad input (a one-line error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 1
EXIT_DOES_NOT_FIT = 2


def parser() -> argparse.ArgumentParser:
    from tempura_jax.aot.topologies import TARGETS

    p = argparse.ArgumentParser(
        prog="tempura-compile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="demo", help="a configs/ name, as launch/train.py")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--topology", required=True, help=f"one of {', '.join(TARGETS)}")
    p.add_argument("--model", help="a model preset or an HF directory (default: model.init)")
    p.add_argument(
        "--shape", help="SEQ,PATCHES per row (default: the largest data buckets; packed: the row)"
    )
    p.add_argument("--frame", help="HxW pixels of each frame, for model FLOPs (default: 16:9)")
    p.add_argument(
        "--what",
        choices=("train", "generate"),
        default="train",
        help="train: the trainer's step; generate: prefill + decode loop (serving memory)",
    )
    p.add_argument(
        "--batch", type=int, help="generate: prompts (default: batch.per_device x shards)"
    )
    p.add_argument("--new-tokens", type=int, default=256, help="generate: decode steps")
    p.add_argument(
        "--hbm-gib", type=float, help="memory to fit in per device (default: the chip's)"
    )
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def model_config(name: str | None, cfg):
    """--model, else model.init's config.json, else the config's own preset."""
    from tempura_jax import checkpoint
    from tempura_jax.config import PRESETS, from_hf_json

    def preset_or_dir(x: str):
        if x in PRESETS:
            return PRESETS[x]()
        return from_hf_json(x)

    if name:
        return preset_or_dir(name)
    init = Path(cfg.model.init)
    if checkpoint.is_checkpoint(init):
        return from_hf_json(checkpoint.OrbaxParams(init).config_path)
    if (init / "config.json").exists():
        return from_hf_json(init)
    if cfg.name in PRESETS:
        return PRESETS[cfg.name]()
    raise ValueError(
        f"model.init {str(init)!r} has no config.json and config {cfg.name!r} is no preset; "
        f"give --model (one of {', '.join(PRESETS)}) or an HF directory"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import configs
    from tempura_jax import overrides
    from tempura_jax.aot import batch, report
    from tempura_jax.aot.compile import compile_train
    from tempura_jax.aot.topologies import TopologyError, target
    from tempura_jax.config import ConfigError

    try:
        module = configs.get(args.config)
        cfg = overrides.apply(module.get_config(args.stage), list(args.overrides))
        t = target(args.topology)
        base = model_config(args.model, cfg)
        seq, patches = batch.parse_shape(args.shape) if args.shape else batch.largest(cfg.data)
        frame = batch.parse_frame(args.frame) if args.frame else batch.default_frame(cfg.data)
        if args.what == "train":
            hbm = int(args.hbm_gib * 2**30) if args.hbm_gib else None
            compiled = compile_train(cfg, base, t, seq, patches, frame, hbm)
        else:
            from tempura_jax.aot.serving import compile_generate

            rows = args.batch or cfg.batch.per_device * t.devices
            compiled = compile_generate(cfg, base, t, seq, patches, frame, rows, args.new_tokens)
    except (overrides.OverrideError, TopologyError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    r = report.to_dict(
        compiled,
        hbm_bytes=int(args.hbm_gib * 2**30) if args.hbm_gib else None,
        what=args.what,
        config=args.config,
        stage=args.stage,
        overrides=list(args.overrides),
        command=" ".join(["tempura-compile", *(argv if argv is not None else sys.argv[1:])]),
    )
    print(report.text(r), flush=True)
    if args.out:
        report.write_json(args.out, r)
    return exit_status(r)


def exit_status(r: dict) -> int:
    return 0 if r["fits"] else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
