"""Packed rows (data.packing=true): measured lengths, the plan, the arrays of
a packed row, loss and gradients equal to the unpacked samples', exact
resume and disjoint shards."""

import json

import jax
import numpy as np
import optax
import pytest
from conftest import demo_data_config
from flax import nnx

from tempura_jax.config import tiny
from tempura_jax.data.batching import collate
from tempura_jax.data.chat import IGNORE
from tempura_jax.data.packing import best_fit_sorted, collate_packed, first_fit
from tempura_jax.data.pipeline import Shard, load_dataset
from tempura_jax.data.records import load_records
from tempura_jax.data.sample import ExampleBuilder
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.train.flops import batch_flops

MODEL = tiny()


def packed_cfg(demo, **kw):
    base = dict(data=(demo["stage1"], demo["stage2"]), packing=True, read_threads=1)
    return demo_data_config(demo, **{**base, **kw})


def examples(cfg, n):
    recs, problems, _ = load_records(list(cfg.data), cfg.media_root)
    assert not problems
    b = ExampleBuilder(cfg, Tokenizer(cfg.tokenizer), MODEL)
    return b, [b.build(r) for r in recs[:n]], recs[:n]


@pytest.mark.parametrize("mode", ["frames", "video"])
def test_measure_equals_build(demo_data, mode):
    cfg = packed_cfg(demo_data, visual_mode=mode, pack_patches=1024)
    b, built, recs = examples(cfg, 4)
    for rec, e in zip(recs, built, strict=True):
        assert b.measure(rec) == (e.num_tokens, e.num_patches)
        assert e.num_patches <= 1024
    # A patch budget below a record's frames drops frames (down to min_frames) like max_seq_len.
    full = b.measure(recs[0])[1]
    tight = cfg.replace(pack_patches=4 * (full // 8))
    assert full // 2 >= ExampleBuilder(tight, b.tok, MODEL).measure(recs[0])[1] > 0


def test_first_fit_respects_the_budget_and_places_every_record_once():
    rng = np.random.default_rng(0)
    lengths = np.stack([rng.integers(50, 900, 300), rng.integers(0, 3000, 300)], 1)
    order = rng.permutation(300)
    rows = first_fit(lengths, order, (1024, 4096), window=8)
    assert sorted(i for r in rows for i in r) == list(range(300))
    for r in rows:
        assert (lengths[r].sum(0) <= (1024, 4096)).all()
    assert rows == first_fit(lengths, order, (1024, 4096), window=8)  # deterministic
    wide = first_fit(lengths, order, (1024, 4096), window=64)
    assert len(wide) <= len(rows) < 300  # a wider window fills rows at least as well


def test_best_fit_sorted_fills_rows_closer_to_the_bound():
    rng = np.random.default_rng(1)
    lengths = np.stack([rng.integers(50, 900, 600), rng.integers(0, 3000, 600)], 1)
    order = rng.permutation(600)
    rows = best_fit_sorted(lengths, order, (1024, 4096), 200, np.random.default_rng(0))
    assert sorted(i for r in rows for i in r) == list(range(600))
    for r in rows:
        assert (lengths[r].sum(0) <= (1024, 4096)).all()
    again = best_fit_sorted(lengths, order, (1024, 4096), 200, np.random.default_rng(0))
    assert rows == again  # the plan is the same on every process
    # blocks keep records near their shuffled position: each row comes from one block
    block = {int(i): k // 200 for k, i in enumerate(order)}
    assert all(len({block[i] for i in r}) == 1 for r in rows)
    assert len(rows) < len(first_fit(lengths, order, (1024, 4096), window=64))
    # rows are shuffled: the step order is not the largest-first order
    first = [max(lengths[i, 0] for i in r) for r in rows[: len(rows) // 3]]
    assert first != sorted(first, reverse=True)


def test_packed_row_layout(demo_data):
    cfg = packed_cfg(demo_data)
    b, built, _ = examples(cfg, 3)
    batch = collate_packed([built], cfg, MODEL, b.tok.pad_id, batch_size=2)
    t = 0
    for j, e in enumerate(built):
        n = e.num_tokens
        assert (batch["segment_ids"][0, t : t + n] == j + 1).all()
        # rope positions restart: the sample's own, from 0
        np.testing.assert_array_equal(batch["position_ids"][:, 0, t : t + n], e.position_ids)
        assert batch["position_ids"][:, 0, t].tolist() == [0, 0, 0]
        np.testing.assert_array_equal(batch["labels"][0, t + 1 : t + n], e.labels[1:])
        assert batch["labels"][0, t] == IGNORE
        t += n
    assert (batch["segment_ids"][0, t:] == 0).all() and (batch["segment_ids"][1] == 0).all()
    # Vision: frames and windows of different samples never share a segment id.
    frames = batch["frame_segments"][0]
    q = 0
    seen = set()
    for e in built:
        ids = set(frames[q : q + e.num_patches].tolist())
        assert not ids & seen
        seen |= ids
        q += e.num_patches
    assert (frames[q:] == -1).all() and (batch["frame_segments"][1] == -1).all()
    # Model FLOPs count per-sample attention: a packed row costs what its samples cost.
    flat = collate(built, cfg, MODEL, b.tok.pad_id)
    assert batch_flops(batch, MODEL) == pytest.approx(batch_flops(flat, MODEL), rel=1e-12)


def accumulate_flat_and_packed(flat, packed, text_bound=None):
    """One fp32 `accumulate` of each batch from the same tiny model: the flat
    one right-padded, the packed one with the decoder's `text_bound`."""
    from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL
    from tempura_jax.sharding import make_mesh
    from tempura_jax.train.step import StepFns

    model_cfg = MODEL.replace(param_dtype="float32", compute_dtype="float32")
    graphdef, train, frozen = nnx.split(Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    out = []
    with jax.set_mesh(mesh):
        for batch, packed_row in ((flat, False), (packed, True)):
            tb = text_bound if packed_row else None
            fns = StepFns.build(
                graphdef, train, optax.sgd(1.0), mesh, "fsdp", 64, not packed_row, text_bound=tb
            )
            out.append(jax.device_get(fns.accumulate(train, frozen, fns.zeros(train), batch)))
    return out


def assert_same_sums(a, p):
    """Two `Accum`s of the same samples: counts equal, loss and every gradient
    within fp32 rounding (each gradient non-zero, so it proves something)."""
    assert int(a.count) == int(p.count) > 0 and int(a.tokens) == int(p.tokens)
    assert int(a.patches) == int(p.patches)
    np.testing.assert_allclose(p.loss_sum, a.loss_sum, rtol=1e-5)
    for (path, ga), gp in zip(
        jax.tree_util.tree_leaves_with_path(a.grads), jax.tree.leaves(p.grads), strict=True
    ):
        scale = np.abs(ga).max()
        assert scale > 0, path
        np.testing.assert_allclose(gp, ga, rtol=1e-5, atol=1e-5 * scale, err_msg=str(path))


@pytest.mark.parametrize("mode", ["frames"])  # video: the same path with no image offset
def test_packed_loss_and_gradients_equal_unpacked(demo_data, mode):
    # Small shapes (two demo samples fill a row) keep the two compiles quick.
    cfg = packed_cfg(
        demo_data, visual_mode=mode, max_seq_len=640, pack_patches=768, patch_bucket_min=256
    )
    b, built, _ = examples(cfg, 3)
    flat = collate(built, cfg, MODEL, b.tok.pad_id)  # one sample per row
    packed = collate_packed([built[:2], built[2:]], cfg, MODEL, b.tok.pad_id, batch_size=2)
    assert packed["segment_ids"][0].max() == 2
    assert_same_sums(*accumulate_flat_and_packed(flat, packed))


def test_rows_longer_than_a_sample_attend_block_locally(demo_data, monkeypatch):
    """pack_seq_len > max_seq_len: the decoder's causal attention takes only the
    key blocks a sample can reach (`text_bound`), with the unpacked loss and
    gradients; a batch breaking the bound is refused on the host."""
    from tempura_jax.ops import attention as attn
    from tempura_jax.train.step import check_text_bound, text_bound

    cfg = packed_cfg(demo_data, max_seq_len=400, pack_seq_len=1024, patch_bucket_min=256)
    bound = text_bound(cfg)
    assert bound == 512 and text_bound(cfg.replace(pack_seq_len=0)) is None  # 1 row: dense
    b, built, _ = examples(cfg, 3)
    flat = collate(built, cfg, MODEL, b.tok.pad_id)
    packed = collate_packed([built], cfg, MODEL, b.tok.pad_id, batch_size=1)
    assert packed["segment_ids"].shape == (1, 1024) and packed["segment_ids"].max() == 3
    check_text_bound(packed, bound)
    with pytest.raises(ValueError, match="a run of 600, the step was built for samples <= 128"):
        check_text_bound({"segment_ids": np.repeat([[1, 2, 0]], [600, 300, 124], axis=1)}, 128)
    causal_local = []
    real = attn.block_local_attention

    def spy(*a, causal, **kw):
        causal_local.append(causal)
        return real(*a, causal=causal, **kw)

    monkeypatch.setattr(attn, "block_local_attention", spy)
    sums = accumulate_flat_and_packed(flat, packed, bound)
    assert causal_local.count(True) == MODEL.text.num_hidden_layers  # the packed trace only
    assert_same_sums(*sums)


def batches_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sort", [0, 8])
def test_packed_iterator_resumes_exactly(demo_data, sort):
    cfg = packed_cfg(demo_data, num_epochs=None, batch_size=1, max_seq_len=768, pack_sort=sort)
    ds = load_dataset(cfg, MODEL)
    assert ds.steps_per_epoch >= 2
    it = iter(ds)
    for _ in range(ds.batches_per_epoch - 1):
        next(it)
    state = it.get_state()
    json.dumps(state)
    expected = [next(it) for _ in range(3)]  # crosses into the second epoch's plan
    resumed = iter(load_dataset(cfg, MODEL))
    resumed.set_state(state)
    got = [next(resumed) for _ in range(3)]
    assert all(batches_equal(a, b) for a, b in zip(expected, got, strict=True))
    shapes = {(b["input_ids"].shape, b["pixel_values"].shape) for b in expected}
    assert shapes == {((1, 768), (1, 4 * 768, 1176))}  # one shape, every step
    first = [s for b in load_dataset(cfg.replace(num_epochs=1), MODEL) for s in b["sources"]]
    second = [s for b in expected[1:] for s in b["sources"]]
    assert second != first[: len(second)]  # epochs are planned from different orders


def test_packed_shards_are_disjoint(demo_data):
    """Each process's packed rows of a global step are its slice of the rows
    one process reads alone."""
    cfg = packed_cfg(demo_data, batch_size=1, max_seq_len=768)
    whole = [list(b["sources"]) for b in load_dataset(cfg.replace(batch_size=2), MODEL)]
    parts = [[list(b["sources"]) for b in load_dataset(cfg, MODEL, Shard(i, 2))] for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) >= 2
    for k, batch in enumerate(whole):
        assert parts[0][k] + parts[1][k] == batch
    names = [{s for row in p for r in row for s in r.split("\n")} for p in parts]
    assert names[0] and not names[0] & names[1]


def test_pack_seq_len_rows_hold_longer_than_a_sample(demo_data):
    """Rows of pack_seq_len tokens; each sample still fits max_seq_len."""
    cfg = packed_cfg(demo_data, max_seq_len=400, pack_seq_len=1024, batch_size=1)
    ds = load_dataset(cfg, MODEL)
    rows = ds.plan.rows(0)
    assert max(len(r) for r in rows) == 3
    batch = next(iter(ds))
    assert batch["input_ids"].shape == (1, 1024) and batch["pixel_values"].shape[1] == 4096
    seg = batch["segment_ids"][0]
    assert all(0 < (seg == j).sum() <= 400 for j in range(1, seg.max() + 1))


def test_pack_lengths_cache(demo_data, tmp_path, monkeypatch):
    """Measured once; a changed media file or data config is measured again."""
    import os

    from tempura_jax.data.lengths import measure_records

    cache = tmp_path / "lengths.json"
    cfg = packed_cfg(demo_data, pack_lengths=str(cache))
    recs, _, _ = load_records(list(cfg.data), cfg.media_root)
    first = measure_records(recs, cfg, MODEL)
    assert cache.exists() and all(isinstance(m, tuple) for m in first)
    calls = []
    real = ExampleBuilder.measure
    monkeypatch.setattr(ExampleBuilder, "measure", lambda s, r: calls.append(r) or real(s, r))
    assert measure_records(recs, cfg, MODEL) == first and not calls  # all from the file
    st = os.stat(recs[0].media)
    os.utime(recs[0].media, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert measure_records(recs, cfg, MODEL) == first
    assert {r.media for r in calls} == {recs[0].media}  # only that video's records again
    calls.clear()
    other = measure_records(recs, cfg.replace(max_seq_len=250), MODEL)  # frames dropped
    assert len(calls) == len(recs) and other != first


def test_a_record_failing_to_decode_leaves_padding(demo_data, monkeypatch):
    from tempura_jax.data.sample import SampleError

    cfg = packed_cfg(demo_data, batch_size=1, max_skip_fraction=0.5)
    ds = load_dataset(cfg, MODEL)
    bad = ds.records[ds.plan.rows(0)[0][0]]  # the first sample of the first row
    real = ExampleBuilder.build

    def build(self, rec):
        if rec.source == bad.source:
            raise SampleError(rec.source, "bad_media", "truncated (test)")
        return real(self, rec)

    monkeypatch.setattr(ExampleBuilder, "build", build)
    it = iter(ds)
    first = next(it)
    planned = ds.plan.rows(0)[0]
    names = first["sources"][0].split("\n")
    assert bad.source not in names and len(names) == len(planned) - 1
    assert first["segment_ids"].max() == len(planned) - 1  # the rest packed, the gap is padding
    assert ds.skips.counts["bad_media"] == 1
    assert first["input_ids"].shape == (1, cfg.max_seq_len)
