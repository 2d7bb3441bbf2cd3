"""TEMPURA's recipe on Qwen2.5-VL-7B-Instruct: the 3B config's hyperparameters
and data (configs/qwen2_5_vl_3b.py) with the 7B's weights and workdir. Paths
are placeholders for your copies: override them on the command line."""

from __future__ import annotations

import dataclasses

from configs import qwen2_5_vl_3b
from tempura_jax.train.config import TrainConfig

INIT = {1: "checkpoints/Qwen2.5-VL-7B-Instruct", 2: "workdir/qwen2_5_vl_7b/stage1/checkpoints"}


def get_config(stage: int) -> TrainConfig:
    base = qwen2_5_vl_3b.get_config(stage)
    return base.replace(
        name="qwen2_5_vl_7b",
        workdir=f"workdir/qwen2_5_vl_7b/stage{stage}",
        model=dataclasses.replace(base.model, init=INIT[stage]),
        data=dataclasses.replace(base.data, tokenizer=INIT[1]),
    )
