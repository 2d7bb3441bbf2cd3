"""TEMPURA on Qwen2.5-VL-3B-Instruct with the paper's hyperparameters.

Global batch 64, AdamW (weight decay 0.1, not on norms and biases), cosine
schedule with 3% warm-up, 1 epoch, learning rates 2e-6 (vision tower),
1e-5 (merger), 1e-5 (LLM); 1 FPS stamped frames. Stage 1 (masked event
prediction) starts from the Instruct weights in a local HF directory; stage
2 (dense captioning) from stage 1's last checkpoint with a fresh optimiser.
Paths are placeholders for your copies: override them on the command line.
"""

from __future__ import annotations

from tempura_jax.data.config import DataConfig
from tempura_jax.train.config import (
    BatchConfig,
    CheckpointConfig,
    MeshConfig,
    ModelSetup,
    TrainConfig,
)
from tempura_jax.train.optim import OptimConfig

DATA = {1: "data/ver/stage1_masked.json", 2: "data/ver/stage2_dense.json"}
INIT = {1: "checkpoints/Qwen2.5-VL-3B-Instruct", 2: "workdir/qwen2_5_vl_3b/stage1/checkpoints"}


def get_config(stage: int) -> TrainConfig:
    return TrainConfig(
        name="qwen2_5_vl_3b",
        stage=stage,
        workdir=f"workdir/qwen2_5_vl_3b/stage{stage}",
        epochs=1,
        model=ModelSetup(
            init=INIT[stage],
            param_dtype="float32",
            compute_dtype="auto",
            remat_decoder="full",
            remat_vision="full",
        ),
        data=DataConfig(
            data=(DATA[stage],),
            media_root="data/ver",
            tokenizer=INIT[1],
            max_seq_len=8192,
            workers=4,
        ),
        optim=OptimConfig(vision_lr=2e-6, merger_lr=1e-5, llm_lr=1e-5, weight_decay=0.1),
        batch=BatchConfig(global_size=64, per_device=2),
        mesh=MeshConfig(shape=(1, -1, 1), layout="fsdp"),
        checkpoint=CheckpointConfig(every=200, keep=3),
    )
