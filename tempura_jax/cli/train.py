"""Train Qwen2.5-VL with the TEMPURA recipe: stage 1 (masked event prediction)
or stage 2 (dense event captioning), on one CPU, one GPU or a pod slice.

    python launch/train.py --stage 1                      # tiny demo, CPU, minutes
    python launch/train.py --stage 2                      # from stage 1's checkpoint
    python launch/train.py --stage 1 --config qwen2_5_vl_3b \\
        model.init=/ckpt/Qwen2.5-VL-3B-Instruct data.data=/ver/stage1.json \\
        data.media_root=/ver mesh.shape=1,-1,1

Any config key is set with key=value (see the list below). A run resumes
from the latest complete checkpoint in its workdir; SIGTERM saves one and
exits. Several processes: give each --coordinator HOST:PORT
--num-processes N --process-id I (TPU pods and SLURM are found automatically).
"""

from __future__ import annotations

import argparse
import logging
import sys

import configs
from tempura_jax import overrides

EXIT_DIVERGED = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    p.add_argument("--stage", type=int, choices=(1, 2), required=False, default=None)
    p.add_argument("--config", default="demo", help=f"one of {sorted(configs.CONFIGS)}")
    p.add_argument("--workdir", help="same as workdir=DIR")
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process runs)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("-h", "--help", action="store_true", help="this text and every config key")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def build_config(args: argparse.Namespace):
    module = configs.get(args.config)
    cfg = module.get_config(args.stage)
    items = list(args.overrides)
    if args.workdir:
        items.append(f"workdir={args.workdir}")
    if args.coordinator:
        items += [
            f"dist.coordinator={args.coordinator}",
            f"dist.num_processes={args.num_processes or 1}",
            f"dist.process_id={args.process_id or 0}",
        ]
    return module, overrides.apply(cfg, items)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.help:
        parser().print_help()
        module = configs.get(args.config)
        print(f"\nconfig keys ({args.config}, stage {args.stage or 1}; set with key=value):")
        print(overrides.describe(module.get_config(args.stage or 1)))
        return 0
    if args.stage is None:
        parser().error("--stage 1|2 is required")
    try:
        module, cfg = build_config(args)
    except (overrides.OverrideError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's per-save chatter

    from tempura_jax.train import trainer

    trainer.init_distributed(cfg)
    import jax

    if jax.process_index() == 0 and hasattr(module, "prepare"):
        module.prepare(cfg)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("prepared")
    try:
        run = trainer.Trainer(cfg)
    except (ValueError, FileNotFoundError) as e:  # config, data or model set-up
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        outcome = run.run()
    except trainer.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if jax.process_index() == 0:
        print(f"{outcome.status} at step {outcome.step}: {cfg.workdir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
