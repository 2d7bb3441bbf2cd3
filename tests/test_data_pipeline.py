"""Examples, batches and the Grain pipeline: positions, masks, labels, resume,
sharding, the sequence budget, and bad records skipped and reported."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_data_config

from tempura_jax.config import tiny
from tempura_jax.data.batching import collate, patch_buckets, repad, seq_buckets
from tempura_jax.data.chat import IGNORE
from tempura_jax.data.pipeline import Shard, load_dataset
from tempura_jax.data.records import load_records
from tempura_jax.data.sample import ExampleBuilder, SampleError
from tempura_jax.data.skips import DataError
from tempura_jax.data.stamp import StampConfig, stamp_box
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.positions import rope_index

MODEL = tiny()
ROOT = Path(__file__).resolve().parents[1]


def builder(cfg):
    return ExampleBuilder(cfg, Tokenizer(cfg.tokenizer), MODEL)


def records(cfg):
    recs, problems, _ = load_records(list(cfg.data), cfg.media_root)
    assert not problems
    return recs


@pytest.mark.parametrize("mode", ["frames", "video"])
def test_positions_equal_rope_index(demo_data, mode):
    cfg = demo_data_config(demo_data, visual_mode=mode)
    b = builder(cfg)
    examples = [b.build(r) for r in records(cfg)[:2]]
    batch = collate(examples, cfg, MODEL, b.tok.pad_id)
    for i, e in enumerate(examples):
        kw = (
            dict(video_grid_thw=e.grid_thw, second_per_grid_ts=e.second_per_grid_ts)
            if mode == "video"
            else dict(image_grid_thw=e.grid_thw)
        )
        ref, _ = rope_index(e.input_ids[None], config=MODEL, **kw)
        n = e.num_tokens
        np.testing.assert_array_equal(batch["position_ids"][:, i, :n], ref[:, 0])
        np.testing.assert_array_equal(batch["input_ids"][i, :n], e.input_ids)
        assert (batch["segment_ids"][i, :n] == 1).all() and (batch["segment_ids"][i, n:] == 0).all()
        assert (batch["labels"][i, n:] == IGNORE).all()
    if mode == "video":  # 1 FPS sampling: two frames per temporal patch = 2 s
        np.testing.assert_allclose(examples[0].second_per_grid_ts, 2.0, atol=1e-6)
        assert len(examples[0].grid_thw) == 1
    else:  # TEMPURA: one image block per frame
        assert len(examples[0].grid_thw) == len(examples[0].times)


def test_labels_are_the_assistant_reply(demo_data):
    cfg = demo_data_config(demo_data)
    rec = records(cfg)[0]
    e = builder(cfg).build(rec)
    tok = Tokenizer(cfg.tokenizer)
    trained = e.labels != IGNORE
    assert tok.decode(e.input_ids[trained], skip_special_tokens=False) == rec.target + "<|im_end|>"


def test_masked_frames_are_black(demo_data):
    cfg = demo_data_config(demo_data, data=(demo_data["stage1"],))
    rec = records(cfg)[0]
    lo, hi = rec.masked[0][0], rec.masked[0][1] + 1
    frames, times, _ = builder(cfg).frames(rec)
    inside = (times >= lo) & (times < hi)
    assert inside.sum() == hi - lo
    for f, t, m in zip(frames, times, inside, strict=True):
        x0, y0, x1, y1 = stamp_box(f.shape[1], f.shape[0], f"{t:.1f}", StampConfig())
        body = f.copy()
        body[y0:y1, x0:x1] = 0
        assert (body == 0).all() == m  # black outside the stamp exactly when masked
        assert (f[y0:y1, x0:x1] > 200).any()  # the time is still drawn
    no_stamp = cfg.replace(stamp=StampConfig(enabled=False))
    frames, times, _ = builder(no_stamp).frames(rec)
    assert all((f == 0).all() for f, m in zip(frames, inside, strict=True) if m)
    # The reference forgot to blank: blank_masked=False keeps the content.
    frames, _, _ = builder(no_stamp.replace(blank_masked=False)).frames(rec)
    assert not any((f == 0).all() for f in frames)


def test_sequence_budget_drops_frames_never_targets(demo_data):
    cfg = demo_data_config(demo_data)
    rec = records(cfg)[0]
    full = builder(cfg).build(rec)
    tight = cfg.replace(max_seq_len=full.num_tokens - 40)
    short = builder(tight).build(rec)
    assert short.num_tokens <= tight.max_seq_len
    assert 0 < len(short.times) < len(full.times)
    np.testing.assert_array_equal(
        short.input_ids[short.labels != IGNORE], full.input_ids[full.labels != IGNORE]
    )
    assert set(short.times) <= set(full.times)
    with pytest.raises(SampleError, match="too_long"):
        builder(cfg.replace(max_seq_len=100)).build(rec)


def batches_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers,threads", [(0, 1), (0, 4), (2, 1)])
def test_resume_mid_epoch(demo_data, workers, threads):
    cfg = demo_data_config(
        demo_data,
        data=(demo_data["stage1"],),
        workers=workers,
        read_threads=threads,
        num_epochs=None,
        batch_size=2,
    )
    ds = load_dataset(cfg, MODEL)
    it = iter(ds)
    for _ in range(ds.batches_per_epoch - 1):  # stop one batch before the epoch ends
        next(it)
    state = it.get_state()
    json.dumps(state)  # checkpointable as JSON
    expected = [next(it) for _ in range(3)]  # crosses into the reshuffled second epoch
    resumed = iter(load_dataset(cfg, MODEL))
    resumed.set_state(state)
    got = [next(resumed) for _ in range(3)]
    assert all(batches_equal(a, b) for a, b in zip(expected, got, strict=True))
    if workers == 0:  # epochs are shuffled differently
        first_epoch = list(next(iter(load_dataset(cfg, MODEL)))["sources"])
        assert list(expected[1]["sources"]) != first_epoch


def test_shards_are_disjoint(demo_data):
    """Two processes' rows of each global batch are disjoint and together are
    exactly the global batch one process reads alone."""
    cfg = demo_data_config(demo_data, data=(demo_data["stage1"],), batch_size=1)
    whole = [list(b["sources"]) for b in load_dataset(cfg.replace(batch_size=2), MODEL)]
    parts = [[list(b["sources"]) for b in load_dataset(cfg, MODEL, Shard(i, 2))] for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) >= 2
    for k, batch in enumerate(whole):
        assert parts[0][k] + parts[1][k] == batch
    assert not {s for p in parts[0] for s in p} & {s for p in parts[1] for s in p}


SHARD_SCRIPT = """
import json, sys
import jax
jax.distributed.initialize("127.0.0.1:{port}", num_processes=2, process_id=int(sys.argv[1]))
sys.path.insert(0, {tests!r})
from conftest import demo_data_config
from tempura_jax.config import tiny
from tempura_jax.data.pipeline import Shard, load_dataset
cfg = demo_data_config(json.loads({demo!r}), data=(json.loads({demo!r})["stage1"],), batch_size=1)
cfg = cfg.replace(packing={packing}, max_seq_len=768)
ds = load_dataset(cfg, tiny(), Shard.from_jax())
print(json.dumps(sorted(n for b in ds for s in b["sources"] for n in s.split("\\n") if n)))
"""


@pytest.mark.parametrize("packing", [False, True])
def test_two_processes_see_disjoint_shards(demo_data, tmp_path, packing):
    import portpicker

    script = tmp_path / "shard.py"
    script.write_text(
        SHARD_SCRIPT.format(
            port=portpicker.pick_unused_port(),
            tests=str(ROOT / "tests"),
            demo=json.dumps(demo_data),
            packing=packing,
        )
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    a, b = (set(json.loads(o[0].strip().splitlines()[-1])) for o in outs)
    assert a and b and not a & b and (packing or len(a) == len(b))  # packed rows vary


def test_buckets_bound_the_shapes(demo_data):
    cfg = demo_data_config(demo_data, data=(demo_data["stage1"], demo_data["stage2"]))
    shapes = {(b["input_ids"].shape, b["pixel_values"].shape) for b in load_dataset(cfg, MODEL)}
    for (bs, s), (_, p, _) in shapes:
        assert bs == 2 and s in seq_buckets(cfg) and p in patch_buckets(cfg)
    assert seq_buckets(cfg)[-1] == cfg.max_seq_len and all(s % 64 == 0 for s in seq_buckets(cfg))


def test_repad_equals_collate_with_that_shape(demo_data):
    """Hosts agree on the largest bucket and re-pad: the same arrays as
    collating straight to that shape."""
    cfg = demo_data_config(demo_data, data=(demo_data["stage1"],))
    records, _, _ = load_records(list(cfg.data), cfg.media_root)
    tok = Tokenizer(cfg.tokenizer)
    builder = ExampleBuilder(cfg, tok, MODEL)
    examples = [builder.build(r) for r in records[:1]]
    small = collate(examples, cfg, MODEL, tok.pad_id, batch_size=2)
    s, p = small["input_ids"].shape[1] + 128, small["pixel_values"].shape[1] + 256
    big = collate(examples, cfg, MODEL, tok.pad_id, batch_size=2, shape=(s, p))
    grown = repad(small, s, p, tok.pad_id)
    assert grown.keys() == big.keys()
    for k in big:
        np.testing.assert_array_equal(grown[k], big[k], err_msg=k)


# --- bad data ----------------------------------------------------------------------


def bad_data_set(demo, out: Path):
    """The demo's stage-2 records plus one record per kind of bad input."""
    out.mkdir()
    root = Path(demo["media_root"])
    good = json.loads(Path(demo["stage2"]).read_text())
    video = next(r for r in good if r["video"].endswith(".mp4"))
    data = (root / video["video"]).read_bytes()
    media = out / "media"
    shutil.copytree(root / "videos", media / "videos")
    shutil.copytree(root / "frames", media / "frames")
    (media / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (media / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (media / "empty.mp4").write_bytes(b"")
    (media / "zero").mkdir()
    (media / "zero" / "0.jpg").write_bytes(b"")

    def rec(video=video["video"], target=video["conversations"][1]["value"], **extra):
        convs = [{"from": "human", "value": "<video>\nDescribe."}]
        if target is not None:
            convs.append({"from": "gpt", "value": target})
        return {"video": video, "conversations": convs, **extra}

    bad = [
        rec(video="corrupt.mp4"),
        rec(video="truncated.mp4"),
        rec(video="empty.mp4"),
        rec(video="frames/missing"),
        rec(video="zero"),
        rec(target=None),  # no assistant turn
        rec(target="The circle moves around."),  # no events
        rec(target="From 0.0 to 8.0 seconds, a.\n\nFrom 5.0 to 30.0 seconds, b."),  # overlap
        rec(masked_start_end_frame_idxs=[[100, 104]]),  # mask after the video
        {"conversations": []},  # no video field
    ]
    reasons = ["bad_media"] * 5 + [
        "no_assistant",
        "bad_events",
        "bad_events",
        "bad_mask",
        "bad_record",
    ]
    (out / "train.json").write_text(json.dumps(good + bad))
    (out / "broken.json").write_text('[{"video": "x", ')
    lines = [json.dumps(r) for r in good[:2]]  # JSON lines: a bad line loses only itself
    (out / "more.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    return out, len(good), reasons


def test_bad_inputs_are_skipped_and_reported(demo_data, tmp_path):
    out, n_good, reasons = bad_data_set(demo_data, tmp_path / "bad")
    log = tmp_path / "skips.jsonl"
    cfg = demo_data_config(
        demo_data,
        data=(str(out / "train.json"), str(out / "broken.json"), str(out / "more.jsonl")),
        media_root=str(out / "media"),
        batch_size=1,
        max_skip_fraction=1.0,
        skip_log=str(log),
        shuffle=False,
    )
    ds = load_dataset(cfg, MODEL)
    batches = list(ds)
    # A skipped record leaves a padding row: every process runs len(records) steps.
    assert len(batches) == len(ds.records) == ds.steps_per_epoch
    sources = [s for b in batches for s in b["sources"] if s]
    assert len(sources) == n_good + 2
    for b in batches:
        if not b["sources"][0]:
            assert (b["segment_ids"] == 0).all() and (b["labels"] == IGNORE).all()
    expected = {r: reasons.count(r) for r in set(reasons)}
    expected["bad_json"] = 2  # broken.json as a whole, one line of more.jsonl
    assert dict(ds.skips.counts) == expected
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == len(reasons) + 2
    assert any(e["source"].endswith("broken.json") and "line 1" in e["detail"] for e in logged)
    assert any(e["source"].endswith("more.jsonl#1") and "line 2" in e["detail"] for e in logged)
    assert all("#" in e["source"] for e in logged if not e["source"].endswith("broken.json"))
    # Later epochs fail the same records again; each is counted once.
    again = load_dataset(cfg.replace(num_epochs=3, skip_log=None), MODEL)
    assert sum(1 for _ in again) == 3 * len(again.records)
    assert dict(again.skips.counts) == expected
    # Past the budget the run stops with a summary.
    strict = cfg.replace(max_skip_fraction=0.3, skip_log=None)  # 4 at load, 5.1 allowed
    with pytest.raises(DataError, match="6 records skipped.*bad_media: 2"):
        for _ in load_dataset(strict, MODEL):
            pass


def test_check_data_cli_reports_every_problem(demo_data, tmp_path):
    out, n_good, reasons = bad_data_set(demo_data, tmp_path / "bad")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch/check_data.py"),
            "--data",
            str(out / "train.json"),
            str(out / "broken.json"),
            "--media-root",
            str(out / "media"),
            "--tokenizer",
            demo_data["tokenizer"],
            "--max-pixels",
            str(112 * 56),
            "--min-pixels",
            str(112 * 56),
            "--max-seq-len",
            "1024",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{\n") :])
    assert summary["usable"] == n_good and summary["records"] == n_good + len(reasons)
    assert summary["unreadable_files"] == [str(out / "broken.json")]
    assert sum(summary["problems"].values()) == len(reasons) + 1
    assert r.stdout.count("train.json#") == len(reasons)


@pytest.mark.parametrize("mode", ["frames", "video"])
def test_batch_through_the_model(demo_data, mode):
    """A padded pipeline batch (vision with a batch axis) gives each row the
    logits of its example run alone through the HF-style call."""
    import jax
    from flax import nnx

    from tempura_jax.data.batching import model_inputs
    from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL, forward_logits

    cfg = demo_data_config(demo_data, visual_mode=mode)
    b = builder(cfg)
    examples = [b.build(r) for r in records(cfg)[:2]]
    batch = collate(examples, cfg, MODEL, b.tok.pad_id, batch_size=3)  # one empty row
    model = Qwen2_5_VL(MODEL, rngs=nnx.Rngs(0))
    logits = np.asarray(forward_logits(model, jax.tree.map(np.asarray, model_inputs(batch))))
    for i, e in enumerate(examples):
        media = (
            dict(
                pixel_values_videos=e.pixel_values,
                video_grid_thw=e.grid_thw,
                second_per_grid_ts=e.second_per_grid_ts,
            )
            if mode == "video"
            else dict(pixel_values=e.pixel_values, image_grid_thw=e.grid_thw)
        )
        alone = np.asarray(model(e.input_ids[None], **media).logits[0])
        np.testing.assert_allclose(logits[i, : e.num_tokens], alone, atol=1e-4, rtol=1e-4)
        assert np.abs(alone).max() > 0.1
    assert np.isfinite(logits).all()
