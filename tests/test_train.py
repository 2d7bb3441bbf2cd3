"""launch/train.py and the trainer: sharded equality, multi-process equality,
exact resume after SIGKILL, SIGTERM checkpoints, divergence, freezing and
per-group schedules, on a tiny model and the demo data (CPU)."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import shared_compiles

import configs
from tempura_jax import overrides
from tempura_jax.config import tiny
from tempura_jax.train import checkpointing
from tempura_jax.train.optim import schedules
from tempura_jax.train.trainer import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "launch" / "train.py")


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """Enough records for two global batches of 8 (both stages' files)."""
    from tempura_jax.data.demo import DemoSpec, make_demo_data

    out = tmp_path_factory.mktemp("train_data")
    return make_demo_data(out, DemoSpec(num_videos=8, min_seconds=10, max_seconds=12))


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory):
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    out = tmp_path_factory.mktemp("tiny_init")
    write_random_hf_checkpoint(tiny(), out, dtype="float32", seed=0)
    return out


def run_args(demo, init, workdir, *extra) -> list[str]:
    """key=value overrides: the demo config pointed at the test fixtures."""
    return [
        f"model.init={init}",
        f"data.data={demo['stage1']},{demo['stage2']}",
        f"data.media_root={demo['media_root']}",
        f"data.tokenizer={demo['tokenizer']}",
        f"workdir={workdir}",
        "data.read_threads=1",
        "tensorboard=false",
        "progress=false",
        "batch.global_size=4",
        "batch.per_device=2",
        *extra,
    ]


def config(demo, init, workdir, *extra):
    return overrides.apply(configs.get("demo").get_config(1), run_args(demo, init, workdir, *extra))


def metrics(workdir: Path) -> dict[int, dict]:
    """The record logged for each step; a step logged twice is an error (a
    resumed run drops the records after its checkpoint before it logs)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["step"] not in out and rec["step"] > max(out, default=0), rec["step"]
        out[rec["step"]] = rec
    return out


def env() -> dict[str, str]:
    """One CPU device per process, nothing inherited from the test process but
    the session's compilation cache."""
    return {
        **shared_compiles(),
        "JAX_PLATFORMS": "cpu",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": os.environ.get("HOME", "/tmp"),
    }


def launch(args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, TRAIN, "--stage", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def saved_steps(workdir: Path) -> list[int]:
    """Finished checkpoints: Orbax renames a step's directory into place only
    once every item is written."""
    root = Path(workdir) / "checkpoints"
    return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else []


def wait_for_step(
    proc: subprocess.Popen,
    workdir: Path,
    step: int,
    timeout: float = 300,
    checkpoint: int | None = None,
) -> None:
    """Block until `step` is logged (by reading the metrics file as it grows)
    and, with `checkpoint`, a checkpoint of at least that step is finished
    (asynchronous saves can trail the log on a loaded machine)."""
    import time

    path = Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-3000:]}")
        try:
            saved = checkpoint is None or any(s >= checkpoint for s in saved_steps(workdir))
            if path.exists() and max(metrics(workdir), default=0) >= step and saved:
                return
        except json.JSONDecodeError:
            pass  # a line being written
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s")


# -- one process: meshes, layouts, accumulation ---------------------------------------------


MESH_ARGS = ("max_steps=2", "batch.global_size=8")


@pytest.fixture(scope="module")
def single_device_run(train_data, tiny_init, tmp_path_factory):
    """Global batch 8 on one device: 2 rows x 4 accumulation steps."""
    cfg = config(train_data, tiny_init, tmp_path_factory.mktemp("one"), *MESH_ARGS)
    return Trainer(cfg, devices=jax.devices()[:1]).run()


@pytest.mark.parametrize(
    "shape,layout",
    [((8, 1, 1), "fsdp"), ((2, 4, 1), "fsdp"), ((2, 4, 1), "zero2"), ((2, 2, 2), "fsdp")],
)
def test_meshes_match_one_device(train_data, tiny_init, tmp_path, single_device_run, shape, layout):
    """The same global batches on 8 devices (any mesh, layout and accumulation:
    (2,2,2) has 4 batch shards, so 2 accumulation steps) give the losses and
    gradient norms of one device."""
    cfg = config(
        train_data,
        tiny_init,
        tmp_path,
        *MESH_ARGS,
        f"mesh.shape={','.join(map(str, shape))}",
        f"mesh.layout={layout}",
        "batch.per_device=1",
    )
    trainer = Trainer(cfg)
    assert trainer.accum == (2 if shape == (2, 2, 2) else 1)
    out = trainer.run()
    embed = trainer.fns.param_shardings["model"]["embed_tokens"]
    opt_specs = {str(s.spec) for s in jax.tree.leaves(trainer.fns.opt_shardings)}
    if layout == "fsdp" and shape[1] > 1:  # parameters split over fsdp
        assert "fsdp" in str(embed.spec)
    if layout == "zero2":  # whole parameters, split optimiser state
        assert "fsdp" not in str(embed.spec) and any("fsdp" in s for s in opt_specs)
    ref = single_device_run.records
    assert len(out.records) == len(ref) == 2
    for a, b in zip(out.records, ref, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
        assert a["target_tokens"] == b["target_tokens"]
    assert ref[1]["loss"] != ref[0]["loss"]


def test_batch_vision_bounds_give_the_run_s_losses(
    train_data, tiny_init, tmp_path, single_device_run
):
    """`model.vision_bounds=batch`: each batch's tightest exact bounds (the
    demo's equal frames are aligned blocks) instead of the run's band; the
    same losses, one step program per distinct bound pair, counted in
    `compiled_shapes` with the batch shapes."""
    from tempura_jax.ops.block_local import Aligned

    cfg = config(train_data, tiny_init, tmp_path, *MESH_ARGS, "model.vision_bounds=batch")
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    out = trainer.run()
    for a, b in zip(out.records, single_device_run.records, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    used = {bounds for *_, bounds in trainer.shapes}
    assert used and trainer.fns.vision_bounds not in used
    assert set(trainer.fns._bounded) == used
    assert all(isinstance(frame, Aligned) for _, frame in used)
    assert out.records[-1]["compiled_shapes"] == len(trainer.shapes)


def test_processes_that_find_different_bounds_step_with_the_run_s():
    """With `vision_bounds=batch` every process gathers the others' pairs: one
    that differs sends all of them to the run's bounds (which hold for every
    batch), so no two processes trace different programs."""
    from tempura_jax.ops.block_local import Aligned
    from tempura_jax.train.step import agreed_bounds, bound_code

    run, mine = (64, 640), (64, Aligned(336))
    same = np.array([[bound_code(b) for b in mine]] * 2)
    assert same.tolist() == [[64, -336], [64, -336]]
    assert agreed_bounds(same, mine, run) == mine
    other = np.array([[64, -336], [64, -240]])  # another frame size on process 1
    assert agreed_bounds(other, mine, run) == run
    assert agreed_bounds(np.array([[64, -336], [0, -336]]), mine, run) == run


# -- separate processes: exact resume, preemption, two processes ---------------------------

BAD_RECORDS = 4  # two fail validation when loaded, two when their example is built


@pytest.fixture(scope="module")
def with_bad_records(train_data):
    """Overrides adding a file of bad records to the training data: the runs
    below skip them, and every run must count the same skips at every step
    (after a resume, and summed over processes)."""
    root = Path(train_data["media_root"])
    good = json.loads(Path(train_data["stage2"]).read_text())[0]
    real = root / "bad_source.mp4"
    from tempura_jax.data.video_io import write_video

    write_video(real, [np.full((36, 64, 3), 9 * i, np.uint8) for i in range(24)], fps=8)
    (root / "bad_corrupt.mp4").write_bytes(real.read_bytes()[:600])  # truncated
    human = good["conversations"][0]
    overlap = "From 0.0 to 2.5 seconds, a.\n\nFrom 0.5 to 3.0 seconds, b."
    overlapping = [human, {"from": "gpt", "value": overlap}]
    bad = [
        {"video": good["video"], "conversations": [human]},  # no assistant turn
        {"video": good["video"], "conversations": [{**human, "from": "robot"}]},
        {"video": "bad_corrupt.mp4", "conversations": good["conversations"]},
        {"video": "bad_source.mp4", "conversations": overlapping},
    ]
    path = root / "bad_records.json"
    path.write_text(json.dumps(bad))
    files = f"{train_data['stage1']},{train_data['stage2']},{path}"
    return (f"data.data={files}", "data.max_skip_fraction=0.5")


RUN_ARGS = ("max_steps=5", "checkpoint.every=2", "checkpoint.keep=2")


@pytest.fixture(scope="module")
def reference(train_data, tiny_init, tmp_path_factory, with_bad_records):
    """An uninterrupted single-process run (one CPU device, 2 x 2 accumulation)."""
    workdir = tmp_path_factory.mktemp("reference")
    out = finish(launch(run_args(train_data, tiny_init, workdir, *RUN_ARGS, *with_bad_records)))
    got = metrics(workdir)
    assert got[5]["skipped_records"] == BAD_RECORDS  # 18 + 2 usable records in 5 steps of 4
    # The start-up printout: the mesh and the resolved config.
    assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in out and '"max_steps": 5' in out
    # Saved at steps 2, 4 and the last one; checkpoint.keep=2 leaves the newest two.
    ckpts = workdir / "checkpoints"
    assert sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit()) == [4, 5]
    for r in got.values():
        assert r["tokens"] > r["target_tokens"] > 0 and r["step_time"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_time"])
        assert r["mfu"] is None  # no peak FLOP/s is known for a CPU
        assert 0 < r["padding_tokens"] < 1 and 0 < r["padding_patches"] < 1  # buckets pad
    # Bucketed batches: one compiled shape per (sequence, patch) bucket met so far.
    shapes = [r["compiled_shapes"] for r in got.values()]
    assert shapes == sorted(shapes) and shapes[0] >= 1
    return got


def test_sigkill_then_resume_is_bit_identical(
    train_data, tiny_init, tmp_path, reference, with_bad_records
):
    args = run_args(train_data, tiny_init, tmp_path, *RUN_ARGS, *with_bad_records)
    proc = launch(args)
    wait_for_step(proc, tmp_path, 3, checkpoint=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(metrics(tmp_path))
    assert killed_at < 5
    out = finish(launch(args))
    assert "finished at step 5" in out
    # It resumed from the last complete checkpoint (every 2 steps), not from scratch.
    resumed = re.search(r"resuming at step (\d+)", out)
    assert resumed and 0 < int(resumed[1]) <= killed_at and int(resumed[1]) % 2 == 0, out
    got = metrics(tmp_path)
    assert sorted(got) == sorted(reference) == [1, 2, 3, 4, 5]
    for step in reference:
        assert got[step]["loss"] == reference[step]["loss"], step  # bit-identical
        assert got[step]["grad_norm"] == reference[step]["grad_norm"], step
        assert got[step]["skipped_records"] == reference[step]["skipped_records"], step
    assert len(set(r["loss"] for r in reference.values())) == 5


def test_sigterm_saves_a_complete_checkpoint(
    train_data, tiny_init, tmp_path, reference, with_bad_records
):
    args = run_args(
        train_data, tiny_init, tmp_path, "checkpoint.every=100", "max_steps=5", *with_bad_records
    )
    proc = launch(args)
    wait_for_step(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    step = max(metrics(tmp_path))
    assert f"preempted at step {step}" in out and step < 5
    root = tmp_path / "checkpoints"
    assert sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) == [step]
    # Complete: every item restores, and the parameters load as a model.
    import tempura_jax

    model = tempura_jax.load_pretrained(root)
    assert model.config.text.hidden_size == tiny().text.hidden_size
    meta = json.loads((root / str(step) / checkpointing.META_ITEM / "metadata").read_text())
    assert meta["step"] == step and meta["config"]["workdir"] == str(tmp_path)
    data = root / str(step) / checkpointing.DATA_ITEM / "process_0-of-1.json"
    assert "grain" in json.loads(data.read_text())
    out = finish(launch(args))
    assert f"resuming at step {step}" in out  # from the preemption checkpoint
    got = metrics(tmp_path)
    assert [got[s]["loss"] for s in sorted(got)] == [reference[s]["loss"] for s in sorted(got)]


@pytest.mark.parametrize("bounds", ["run", "batch"])
def test_two_processes_equal_one(
    train_data, tiny_init, tmp_path, reference, with_bad_records, bounds
):
    """Two gloo processes (one device each, a 2-way data mesh, no accumulation)
    log the losses of the single-process run (2 x 2 accumulation), and count
    the records skipped by both. With `model.vision_bounds=batch` they agree
    on each batch's bounds (or take the run's where their rows differ)."""
    import portpicker

    port = portpicker.pick_unused_port()
    args = run_args(
        train_data,
        tiny_init,
        tmp_path,
        *RUN_ARGS,
        *with_bad_records,
        f"model.vision_bounds={bounds}",
    )
    procs = [
        launch(
            [
                *args,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ]
        )
        for i in range(2)
    ]
    for p in procs:
        finish(p)
    got = metrics(tmp_path)
    assert sorted(got) == sorted(reference)
    for step in reference:
        np.testing.assert_allclose(got[step]["loss"], reference[step]["loss"], rtol=1e-5)
        np.testing.assert_allclose(got[step]["grad_norm"], reference[step]["grad_norm"], rtol=1e-5)
        assert got[step]["skipped_records"] == reference[step]["skipped_records"], step
    assert (tmp_path / "checkpoints" / "5" / "data" / "process_1-of-2.json").exists()
    used = [got[step]["vision_bounds"] for step in sorted(got)]
    run = [reference[step]["vision_bounds"] for step in sorted(got)]
    if bounds == "run":
        assert used == run
    else:  # the demo's equal frames: both processes find the same aligned blocks
        pairs = zip(used, run, strict=True)
        assert all(w != r[0] and f.startswith("aligned") for (w, f), r in pairs)


# -- freezing, schedules, divergence, the CLI ------------------------------------------------


def test_frozen_parameters_bit_identical_and_schedules(train_data, tiny_init, tmp_path):
    """A frozen vision tower is bit-identical after training (the merger and
    LLM move), and each group's logged learning rate follows its schedule."""
    import tempura_jax
    from tempura_jax.train.optim import GROUPS

    cfg = config(
        train_data,
        tiny_init,
        tmp_path,
        "max_steps=3",
        "optim.freeze_vision_tower=true",
        "optim.warmup_ratio=0.25",
    )
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    out = trainer.run()
    before = tempura_jax.load_pretrained(tiny_init)
    after = tempura_jax.load_pretrained(tmp_path / "checkpoints")
    b = before.visual.blocks[0].attn.qkv.kernel[...]
    np.testing.assert_array_equal(np.asarray(after.visual.blocks[0].attn.qkv.kernel[...]), b)
    np.testing.assert_array_equal(
        np.asarray(after.visual.patch_embed.kernel[...]), before.visual.patch_embed.kernel[...]
    )
    assert not np.array_equal(
        after.visual.merger.fc1.kernel[...], before.visual.merger.fc1.kernel[...]
    )
    assert not np.array_equal(after.model.embed_tokens[...], before.model.embed_tokens[...])
    scheds = schedules(cfg.optim, trainer.total_steps)
    for i, rec in enumerate(out.records):
        for g in GROUPS:
            assert rec[f"lr_{g}"] == pytest.approx(float(scheds[g](i)), rel=1e-6)
    assert out.records[0]["lr_llm"] == 0.0  # warm-up starts at zero
    assert out.records[1]["lr_llm"] > 0 and out.records[1]["lr_vision"] < out.records[1]["lr_llm"]


def test_non_finite_steps_are_skipped_then_stop(train_data, tiny_init, tmp_path):
    """A learning rate of 1e30 blows the weights up after one update: the
    following non-finite steps leave parameters and optimiser state alone and
    the run stops after `nan_patience` of them, keeping the last checkpoint."""
    cfg = config(
        train_data,
        tiny_init,
        tmp_path,
        "max_steps=6",
        "optim.llm_lr=1e30",
        "optim.warmup_ratio=0",
        "optim.max_grad_norm=1e30",
        "nan_patience=2",
        "checkpoint.every=1",
    )
    with pytest.raises(TrainingDiverged, match="2 non-finite steps in a row"):
        Trainer(cfg, devices=jax.devices()[:1]).run()
    recs = metrics(tmp_path)
    assert recs[1]["updated"] is True
    bad = [s for s, r in recs.items() if not r["updated"]]
    assert bad == [2, 3], recs
    assert all(
        r["loss"] in ("nan", "inf") or not np.isfinite(r["grad_norm"])
        for s, r in recs.items()
        if s in bad
    )
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps[-1] == 1  # nothing saved after the first bad step


def test_resume_refuses_a_different_data_order(train_data, tiny_init, tmp_path):
    one = jax.devices()[:1]
    Trainer(config(train_data, tiny_init, tmp_path, "max_steps=1"), devices=one).run()
    again = config(train_data, tiny_init, tmp_path, "max_steps=2", "batch.global_size=2")
    with pytest.raises(ValueError, match="batch.global_size: checkpoint 4, now 2"):
        Trainer(again, devices=one)
    out = Trainer(config(train_data, tiny_init, tmp_path, "max_steps=2"), devices=one).run()
    assert [r["step"] for r in out.records] == [2]  # same settings resume at step 1


def test_cli_help_and_bad_keys(capsys):
    sys.path.insert(0, str(ROOT / "launch"))
    import train as cli

    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in (
        "optim.vision_lr",
        "mesh.layout",
        "batch.global_size",
        "data.sampling.fps",
        "model.remat_decoder",
        "checkpoint.every",
    ):
        assert key in text
    assert "sequence positions per fp32 logits block" in text  # model.loss_chunk's meaning
    assert "auto | xla | cudnn | pallas_gpu | splash" in text
    assert cli.main(["--stage", "1", "optim.no_such_key=1"]) == 2
    assert "unknown key 'optim.no_such_key'" in capsys.readouterr().err
    assert cli.main(["--stage", "1", "mesh.layout=zero3"]) == 2
    assert cli.main(["--stage", "1", "optim.llm_lr=fast"]) == 2


@pytest.mark.parametrize("name", ["demo", "qwen2_5_vl_3b"])
def test_every_config_key_is_documented(name):
    """--help gives each key's meaning: a new field needs `overrides.option(default, help)`."""
    for stage in (1, 2):
        rows = list(overrides.documented_leaves(configs.get(name).get_config(stage)))
        assert len(rows) > 80
        assert [key for key, _, _, help in rows if not help] == []


def test_overrides_parse_by_type():
    cfg = configs.get("qwen2_5_vl_3b").get_config(2)
    assert (cfg.batch.global_size, cfg.optim.vision_lr, cfg.optim.llm_lr) == (64, 2e-6, 1e-5)
    assert cfg.optim.weight_decay == 0.1 and cfg.optim.warmup_ratio == 0.03 and cfg.epochs == 1
    cfg = overrides.apply(
        cfg,
        [
            "mesh.shape=2,2,2",
            "data.sampling.num_frames=8",
            "max_steps=none",
            "optim.freeze_llm=yes",
        ],
    )
    assert cfg.mesh.shape == (2, 2, 2) and cfg.data.sampling.num_frames == 8
    assert cfg.max_steps is None and cfg.optim.freeze_llm is True
    with pytest.raises(overrides.OverrideError, match="is a group"):
        overrides.apply(cfg, ["optim=1"])


def test_metrics_log_drops_steps_after_the_resume_point(tmp_path):
    """A run killed after logging step 4 (mid-write of step 5) and resumed
    from its step-2 checkpoint logs steps 3.. again: each step stays once."""
    from tempura_jax.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (1, 2, 3, 4)))
    with path.open("a") as f:
        f.write('{"step": 5, "lo')  # cut off by the kill
    log = MetricsLog(tmp_path, total_steps=6, start_step=2, tensorboard=False, progress=False)
    for s in (3, 4):
        log.write({"step": s, "loss": 10 * s})
    log.close()
    assert [json.loads(line)["loss"] for line in path.open()] == [1, 2, 30, 40]
    MetricsLog(tmp_path, total_steps=6, start_step=4, tensorboard=False, progress=False).close()
    assert len(path.read_text().splitlines()) == 4  # nothing to drop: left as it was


@pytest.mark.parametrize(
    ("env", "tpu_vm", "auto", "joins"),
    [
        ({}, False, True, False),  # one machine: no cluster to join
        ({}, True, True, True),  # a Cloud TPU VM host: JAX finds the slice itself
        ({"SLURM_NTASKS": "4"}, False, True, True),
        ({"SLURM_NTASKS": "4"}, False, False, False),  # dist.auto=false opts out
    ],
)
def test_multi_host_auto_detection(monkeypatch, env, tpu_vm, auto, joins):
    from tempura_jax.train import trainer
    from tempura_jax.train.config import DistConfig

    for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(trainer, "_on_tpu_vm", lambda: tpu_vm)
    calls = []
    monkeypatch.setattr(trainer.jax.distributed, "initialize", lambda *a: calls.append(a))
    cfg = dataclasses.replace(configs.get("demo").get_config(1), dist=DistConfig(auto=auto))
    trainer.init_distributed(cfg)
    assert calls == ([()] if joins else [])
