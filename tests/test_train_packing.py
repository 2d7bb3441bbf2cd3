"""Training on packed rows (data.packing=true): the demo config compiles one
step shape, logs the padding share, and a run killed with SIGKILL resumes to
the same losses. Rows (768 tokens) are longer than a sample (400), so the
decoder attends within its samples (`text_bound`)."""

import re
import signal

import pytest
from test_train import finish, launch, metrics, run_args, tiny_init, train_data, wait_for_step

__all__ = ["tiny_init", "train_data"]  # session fixtures shared with test_train

# 768 tokens per row, samples of at most 400: two demo samples fit a row.
PACKED = (
    "data.packing=true",
    "data.max_seq_len=400",
    "data.pack_seq_len=768",
    "data.pack_patches=768",
)
RUN = ("max_steps=5", "checkpoint.every=2", "checkpoint.keep=2")


@pytest.fixture(scope="module")
def packed_reference(train_data, tiny_init, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("packed")
    out = finish(launch(run_args(train_data, tiny_init, workdir, *RUN, *PACKED)))
    assert "2 steps/epoch" in out, out
    assert "decoder 512" in out, out  # round_bound(400): block-local within a sample
    return metrics(workdir)


def test_packed_demo_compiles_one_shape(packed_reference):
    assert sorted(packed_reference) == [1, 2, 3, 4, 5]  # three epochs' plans
    for r in packed_reference.values():
        assert r["compiled_shapes"] == 1
        # 2 x 2 rows of (768 tokens, 768 patches) per step, all slots counted.
        assert r["padding_tokens"] == pytest.approx(1 - r["tokens"] / (4 * 768))
        assert r["padding_patches"] == pytest.approx(1 - r["patches"] / (4 * 768))
        assert 0 <= r["padding_tokens"] < 0.5 and 0 <= r["padding_patches"] < 0.5
        assert r["target_tokens"] > 0
    assert len({r["loss"] for r in packed_reference.values()}) == 5


def test_packed_sigkill_then_resume_is_bit_identical(
    train_data, tiny_init, tmp_path, packed_reference
):
    args = run_args(train_data, tiny_init, tmp_path, *RUN, *PACKED)
    proc = launch(args)
    wait_for_step(proc, tmp_path, 3, checkpoint=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(metrics(tmp_path))
    assert killed_at < 5
    out = finish(launch(args))
    resumed = re.search(r"resuming at step (\d+)", out)
    assert resumed and 0 < int(resumed[1]) <= killed_at, out
    got = metrics(tmp_path)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step, ref in packed_reference.items():
        assert got[step]["loss"] == ref["loss"], step
        assert got[step]["grad_norm"] == ref["grad_norm"], step
        assert got[step]["padding_tokens"] == ref["padding_tokens"], step
