"""The embedded default: a tiny random Qwen2.5-VL on the synthetic demo set,
on CPU, in minutes. Stage 1 trains masked event prediction from a random
checkpoint; stage 2 starts from stage 1's last checkpoint with a fresh
optimiser and trains dense captioning. Learning rates are far above the
paper's (a random tiny model has everything to learn)."""

from __future__ import annotations

from pathlib import Path

from tempura_jax.data.config import DataConfig
from tempura_jax.data.processor import PixelConfig
from tempura_jax.train.config import BatchConfig, CheckpointConfig, ModelSetup, TrainConfig
from tempura_jax.train.optim import OptimConfig

ROOT = "workdir/demo"
DATA_FILES = {1: "stage1_masked.json", 2: "stage2_dense.json"}


def get_config(stage: int) -> TrainConfig:
    data_dir = f"{ROOT}/data"
    return TrainConfig(
        name="demo",
        stage=stage,
        workdir=f"{ROOT}/stage{stage}",
        epochs=4 if stage == 1 else 48,  # 56 masked records, 12 dense ones (the long DVC prompt)
        model=ModelSetup(init=f"{ROOT}/model" if stage == 1 else f"{ROOT}/stage1/checkpoints"),
        data=DataConfig(
            data=(f"{data_dir}/{DATA_FILES[stage]}",),
            media_root=data_dir,
            tokenizer=f"{data_dir}/tokenizer",
            pixels=PixelConfig(min_pixels=112 * 56, max_pixels=112 * 56),  # 56x84 frames
            max_seq_len=1024,
            read_threads=2,
        ),
        optim=OptimConfig(vision_lr=5e-4, merger_lr=2e-3, llm_lr=2e-3, warmup_ratio=0.1),
        batch=BatchConfig(global_size=4, per_device=2),
        checkpoint=CheckpointConfig(every=4, keep=2),
    )


def prepare(cfg: TrainConfig) -> None:
    """Write the demo data and (for a stage-1 run) a tiny random model if missing."""
    from tempura_jax.config import tiny
    from tempura_jax.data.demo import make_demo_data
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    data_dir = Path(cfg.data.media_root)
    if not all(Path(f).exists() for f in cfg.data.data):
        print(f"writing the demo data set to {data_dir}", flush=True)
        make_demo_data(data_dir)
    init = Path(cfg.model.init)
    if cfg.stage == 1 and not init.exists():
        print(f"writing a tiny random Qwen2.5-VL to {init}", flush=True)
        write_random_hf_checkpoint(tiny(), init, dtype="float32", seed=cfg.seed)
    if not init.exists():
        raise FileNotFoundError(f"{init}: no model to start from (run stage 1 first)")
