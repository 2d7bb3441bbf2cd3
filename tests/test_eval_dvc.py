"""Dense-captioning metrics and benchmark scoring, against hand-computed values."""

import json
import random
import shutil
import string
import sys
import types

import pytest
from conftest import qvh_one_query

from tempura_jax.data.events import Event
from tempura_jax.eval import benchmarks, dvc
from tempura_jax.inference.infer import Prediction


def ev(a, b, c="x"):
    return Event(a, b, c)


def test_coverage_and_overlap():
    events = [ev(0, 4), ev(2, 6), ev(8, 12)]  # union [0,6]+[8,10] in a 10 s video
    assert dvc.coverage(events, 10) == pytest.approx(0.8)
    assert dvc.overlap(events, 10) == pytest.approx(0.2)  # [2,4] covered twice
    assert dvc.coverage([ev(5, 3)], 10) == pytest.approx(0.2)  # reversed still counts
    assert dvc.coverage([], 10) == 0 and dvc.overlap([], 10) == 0
    assert dvc.overlap([ev(0, 5), ev(1, 4), ev(2, 3)], 10) == pytest.approx(0.3)


def test_localisation_recall_and_precision():
    truth = (ev(0, 4), ev(4, 10))
    # tIoU: p0 vs g0 = 3/4, p1 vs g1 = 4/6, p2 = [20, 30] overlaps nothing.
    video = dvc.Video("v", 10, truth, (ev(1, 4), ev(6, 10), ev(20, 30)))
    assert dvc.localisation(video, 0.3) == pytest.approx((1.0, 2 / 3))
    assert dvc.localisation(video, 0.5) == pytest.approx((1.0, 2 / 3))
    assert dvc.localisation(video, 0.7) == pytest.approx((0.5, 1 / 3))
    assert dvc.localisation(video, 0.9) == (0.0, 0.0)
    assert dvc.localisation(dvc.Video("e", 10, truth, ()), 0.3) == (0.0, 0.0)


def test_metrics_over_videos():
    truth = (ev(0, 5, "a"), ev(5, 10, "b"))
    exact = dvc.Video("a", 10, truth, truth)
    empty = dvc.Video("b", 10, truth, ())
    m = dvc.metrics([exact, empty], captions=False)
    assert m["videos"] == 2 and m["unparsed"] == 1
    assert m["events_per_video"] == 1.0 and m["gt_events_per_video"] == 2.0
    assert m["coverage"] == pytest.approx(0.5) and m["overlap"] == 0
    assert m["valid"] == 0.5
    for t in dvc.THRESHOLDS:
        assert m[f"Recall@{t}"] == pytest.approx(50) and m[f"Precision@{t}"] == pytest.approx(50)
    assert m["F1"] == pytest.approx(50)
    with pytest.raises(ValueError, match="no videos"):
        dvc.metrics([])


def test_caption_metrics_say_why_they_are_skipped(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_coco(name, *a, **k):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_coco)
    out = dvc.caption_metrics([dvc.Video("a", 1, (ev(0, 1),), (ev(0, 1),))])
    assert out == {"captions": "skipped: pycocoevalcap is not installed"}


def test_caption_pairs_match_every_overlapping_truth_or_garbage():
    truth = (ev(0, 5, "a"), ev(5, 10, "b"))
    video = dvc.Video("v", 10, truth, (ev(0, 10, "wide"), ev(20, 30, "caf\u00e9")))
    pairs = dvc.caption_pairs(video, 0.5, random.Random(0))  # [0,10] has tIoU 0.5 with both
    assert pairs[:2] == [("wide", "a"), ("wide", "b")]
    (pred, garbage), rest = pairs[2], pairs[3:]
    assert pred == "caf " and not rest  # non-ASCII became a space
    assert 10 <= len(garbage) <= 20 and set(garbage) <= set(string.ascii_uppercase + string.digits)
    again = dvc.caption_pairs(video, 0.5, random.Random(0))
    assert again == pairs  # seeded: reproducible
    assert dvc.caption_pairs(dvc.Video("e", 10, truth, ()), 0.3, random.Random(0)) == []


def _overlap(gts, res):
    """Mean over keys of the share of the prediction's distinct tokens in its reference."""
    per = []
    for k in res:
        pred, ref = set(res[k][0].split()), set(gts[k][0].split())
        per.append(len(pred & ref) / len(pred))
    return sum(per) / len(per)


@pytest.fixture
def fake_coco(monkeypatch):
    """pycocoevalcap stand-ins: a lowercasing, splitting tokenizer and scorers with
    hand-computable scores; every call is recorded as (scorer, gts, res)."""
    calls = []

    class Tokenizer:
        def tokenize(self, captions):
            calls.append(("tokenize", captions, None))
            return {
                k: [" ".join(c["caption"].lower().split()) for c in v] for k, v in captions.items()
            }

    def scorer(name, score):
        class Scorer:
            def __init__(self, *args):
                self.args = args

            def compute_score(self, gts, res):
                assert gts.keys() == res.keys()
                calls.append((name, gts, res))
                return score(gts, res), None

        return Scorer

    bleu = scorer("Bleu", lambda g, r: [_overlap(g, r) / n for n in (1, 2, 3, 4)])
    classes = {
        "bleu.bleu": ("Bleu", bleu),
        "meteor.meteor": ("Meteor", scorer("Meteor", _overlap)),
        "rouge.rouge": ("Rouge", scorer("Rouge", lambda g, r: 2 * _overlap(g, r))),
        "cider.cider": ("Cider", scorer("Cider", lambda g, r: len(r))),  # pairs in this call
        "tokenizer.ptbtokenizer": ("PTBTokenizer", Tokenizer),
    }
    monkeypatch.setitem(sys.modules, "pycocoevalcap", types.ModuleType("pycocoevalcap"))
    for path, (name, cls) in classes.items():
        parts = f"pycocoevalcap.{path}".split(".")
        for i in range(2, len(parts) + 1):
            mod = sys.modules.get(".".join(parts[:i])) or types.ModuleType(".".join(parts[:i]))
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), mod)
        monkeypatch.setattr(sys.modules[f"pycocoevalcap.{path}"], name, cls, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None)
    return calls


def test_caption_metrics_score_each_video_then_average(fake_coco):
    truth = (ev(0, 5, "a dog runs"), ev(5, 10, "a cat sleeps"))
    # [0,10] has tIoU 0.5 with both truths: paired with both at 0.3/0.5, garbage at 0.7/0.9.
    wide = dvc.Video("A", 10, truth, (ev(0, 10, "A dog sleeps"), ev(0, 5, "the dog runs fast")))
    empty = dvc.Video("B", 10, truth, ())  # unparsed answer: present, scores 0
    accents = dvc.Video("C", 4, (ev(0, 4, "ve dog"),), (ev(0, 4, "na\u00efve dog"),))
    out = dvc.caption_metrics([wide, empty, accents])

    # Overlap per video: A at 0.3/0.5: (2/3 + 2/3 + 2/4) / 3 = 11/18; at 0.7/0.9 the
    # garbage pair scores 0: (0 + 2/4) / 2 = 1/4. C: "na ve dog" vs "ve dog" = 2/3
    # (without the non-ASCII removal it would be 1/2). B: 0.
    low, high = (11 / 18 + 0 + 2 / 3) / 3, (1 / 4 + 0 + 2 / 3) / 3
    overlap = 100 * (2 * low + 2 * high) / 4
    assert out["METEOR"] == pytest.approx(overlap)
    assert out["ROUGE_L"] == pytest.approx(2 * overlap)
    for n in (1, 2, 3, 4):
        assert out[f"Bleu_{n}"] == pytest.approx(overlap / n)
    # CIDEr here counts each call's pairs: A 3 then 2, C 1, B 0 (never scored).
    assert out["CIDEr"] == pytest.approx(100 * (2 * (3 + 0 + 1) / 3 + 2 * (2 + 0 + 1) / 3) / 4)
    assert set(out) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}

    cider = [(g, r) for name, g, r in fake_coco if name == "Cider"]
    assert len(cider) == 2 * len(dvc.THRESHOLDS)  # once per video with pairs, per threshold
    gts, res = cider[0]  # threshold 0.3, video A: its own pairs only
    assert sorted(v[0] for v in res.values()) == [
        "a dog sleeps",
        "a dog sleeps",
        "the dog runs fast",
    ]
    assert sorted(v[0] for v in gts.values()) == ["a cat sleeps", "a dog runs", "a dog runs"]
    gts, res = cider[4]  # [0] 0.3 A, [1] 0.3 C, [2] 0.5 A, [3] 0.5 C, [4] 0.7 A
    assert sorted(v[0] for v in res.values()) == ["a dog sleeps", "the dog runs fast"]
    refs = sorted((v[0] for v in gts.values()), key=len)
    assert refs[0] == "a dog runs" and 10 <= len(refs[1]) <= 20 and " " not in refs[1]
    tokenized = [
        c["caption"]
        for name, caps, _ in fake_coco
        if name == "tokenize"
        for v in caps.values()
        for c in v
    ]
    assert all(ord(ch) < 128 for text in tokenized for ch in text)
    assert dvc.caption_metrics([wide, empty, accents]) == out  # seeded garbage: reproducible


def test_caption_metrics_without_any_prediction_score_zero(fake_coco):
    out = dvc.caption_metrics([dvc.Video("a", 4, (ev(0, 4, "a dog"),), ())])
    assert out["CIDEr"] == 0 and out["Bleu_4"] == 0 and out["METEOR"] == 0
    assert fake_coco == []  # nothing to tokenize or score


def test_caption_metrics_need_java(fake_coco, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = dvc.caption_metrics([dvc.Video("a", 1, (ev(0, 1),), (ev(0, 1),))])
    assert out["captions"].startswith("skipped: no java binary")


def _charades_file(tmp_path):
    ann = tmp_path / "charades_sta_test.txt"
    ann.write_text("v1 0.0 4.0##a man sits\nv1 4.0 10.0##he stands\nv2 2.0 6.0##a dog\n")
    return ann


def test_charades_scoring_from_rows(tmp_path):
    bench = benchmarks.get("charades")
    ann = _charades_file(tmp_path)
    cases = bench.cases(ann, tmp_path / "videos", ".mp4")
    assert [c.id for c in cases] == ["0", "1", "2"] and cases[2].video.endswith("videos/v2.mp4")
    assert cases[0].task == "grounding" and cases[0].query == "a man sits"
    rows = [
        bench.row(cases[0], Prediction("0", "", "grounding", "", "x", {"windows": [[0, 4]]}), {}),
        {"id": "1", "answer": "It happens from 10 to 4 seconds."},  # text only, reversed
        {"id": "2", "windows": []},  # unparsed: IoU 0
    ]
    m = bench.score(rows, ann, tmp_path, {"protocol": "first"})
    assert m["mIoU"] == pytest.approx(100 * 2 / 3) and m["unparsed"] == 1
    assert m["R1@0.7"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="1 of 3 queries have no prediction"):
        bench.score(rows[:2], ann, tmp_path, {})
    assert bench.score(rows[:2], ann, tmp_path, {"partial": True})["mIoU"] == 100


def test_qvhighlights_rows_are_official_submissions(tmp_path):
    bench = benchmarks.get("qvhighlights")
    ann = qvh_one_query(tmp_path)
    (case,) = bench.cases(ann, tmp_path, ".mp4")
    assert case.id == "7" and case.task == "highlight" and case.video.endswith("vid_a.mp4")
    pred = Prediction("7", case.video, "highlight", "a dog", "t", {"highlights": [[3.0, 2.0]]})
    row = bench.row(case, pred, bench.context(ann))
    assert row["qid"] == 7 and row["vid"] == "vid_a" and row["id"] == "7"
    assert row["pred_saliency_scores"] == [0.0, 2.0, 0.0, 0.0, 0.0]  # ceil(9 / 2) clips
    assert row["pred_relevant_windows"] == [[2.0, 4.0, 2.0]]
    assert row["windows_from"] == "highlights"
    m = bench.score([row], ann, tmp_path, {})
    assert m["HL-min-VeryGood-Hit1"] == 100.0  # clip 1: every annotator gave 4
    assert m["MR-windows"] == benchmarks.QVH_WINDOWS_NOTE
    brief, detailed = benchmarks.scores(bench, [row], ann, tmp_path, {})
    assert brief == m and detailed["brief"] == m
    # [2, 4] vs the true [2, 6]: IoU 0.5, a hit at 0.5 only; a 4 s window is "short".
    assert detailed["full"]["MR-R1"]["0.5"] == 100.0 and detailed["full"]["MR-R1"]["0.55"] == 0
    assert detailed["short"]["queries"] == 1 and detailed["long"]["queries"] == 0
    assert detailed["HL-min-Fair"] == {"HL-mAP": m["HL-min-Fair-mAP"], "HL-Hit1": 100.0}
    external = {k: v for k, v in row.items() if k != "windows_from"}  # windows of its own
    assert "MR-windows" not in bench.score([external], ann, tmp_path, {})


def test_dvc_scoring_reads_ver_records(tmp_path):
    bench = benchmarks.get("dvc")
    target = "From 0.0 to 4.0 seconds, a.\n\nFrom 4.0 to 10.0 seconds, b."
    ann = tmp_path / "dense.json"
    turns = [{"from": "human", "value": "<video>\nDescribe."}, {"from": "gpt", "value": target}]
    record = {"video": "v.mp4", "conversations": turns}
    ann.write_text(json.dumps([record, record]))
    cases = bench.cases(ann, tmp_path, ".mp4")
    assert [c.id for c in cases] == ["0", "1"] and cases[0].video == str(tmp_path / "v.mp4")
    rows = [
        bench.row(
            cases[0],
            Prediction(
                "0", "", "dense", "", target, {"events": [[0.0, 4.0, "a."], [4.0, 10.0, "b."]]}
            ),
            {},
        ),  # fmt: skip
        {"id": "1", "answer": "From 0 to 10 seconds, all of it."},
    ]
    m = bench.score(rows, ann, tmp_path, {"captions": False})
    assert m["videos"] == 2 and m["events_per_video"] == 1.5 and m["valid"] == 1.0
    assert m["Recall@0.5"] == pytest.approx(75)  # second video: [0,10] hits [4,10] only
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"video": "v.mp4"}]))
    with pytest.raises(ValueError, match="bad.json#0"):
        bench.cases(bad, tmp_path, ".mp4")


def test_read_rows_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1}\n\n[1]\n')
    with pytest.raises(ValueError, match="p.jsonl:3: expected a JSON object"):
        benchmarks.read_rows(path)
