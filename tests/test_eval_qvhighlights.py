"""QVHighlights metrics (official moment_detr semantics), the submission builder and the
highlight parser. Expected values are worked out by hand in the comments."""

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempura_jax.eval import qvhighlights as qvh
from tempura_jax.eval.parsing import parse_highlights

MR_KEYS = {
    "MR-full-mAP",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-short-mAP",
    "MR-middle-mAP",
    "MR-long-mAP",
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
}
HL_KEYS = {f"HL-min-{m}-{k}" for m in ("Fair", "Good", "VeryGood") for k in ("mAP", "Hit1")}


def gt(qid, duration, windows, ids=(0,), scores=((0, 0, 0),)):
    return {
        "qid": qid,
        "query": "q",
        "vid": f"v{qid}",
        "duration": duration,
        "relevant_clip_ids": list(ids),
        "saliency_scores": [list(s) for s in scores],
        "relevant_windows": [list(w) for w in windows],
    }


# ---------------------------------------------------------------- highlight detection


def test_saliency_ap_hand_values():
    # scores 0.9 (clips 1, 2 tied: one threshold), 0.5 (clip 0), 0.1 (clip 3); labels [1,0,1,0]:
    # t=0.9: tp 1/2 -> P .5, R .5; t=0.5: P 2/3, R 1; t=0.1: P .5, R 1.
    # Interpolated (max over this and lower thresholds): 2/3, 2/3; recall grows at 0.9 and 0.5.
    s = [0.5, 0.9, 0.9, 0.1]
    assert qvh.saliency_ap([1, 0, 1, 0], s) == pytest.approx(2 / 3)
    # labels [0,0,1,0]: t=0.9 P .5 R 1 (only counted point); max(.5, 1/3, 1/4) = .5.
    assert qvh.saliency_ap([0, 0, 1, 0], s) == pytest.approx(0.5)
    # positive only at t=0.5: t=0.9 adds no recall (not counted), t=0.5 P 1/3 -> 1/3.
    assert qvh.saliency_ap([1, 0, 0, 0], s) == pytest.approx(1 / 3)
    assert qvh.saliency_ap([1, 1, 1, 1], s) == 1.0  # all positive
    assert qvh.saliency_ap([0, 0, 0, 0], s) == 0.0  # all negative
    # zero-padded: [0.5, 0, 0] -> t=0.5: P 0 R 0; t=0: P 2/3 R 1 -> 2/3.
    assert qvh.saliency_ap([0, 1, 1], [0.5]) == pytest.approx(2 / 3)
    # truncated: [0.3, 0.1, 0.2, 9.0] -> [0.3, 0.1, 0.2]; labels [1,1,0]:
    # t=.3 P 1 R .5; t=.2 P .5 R .5 (not counted); t=.1 P 2/3 R 1 -> (1 + 2/3) / 2.
    assert qvh.saliency_ap([1, 1, 0], [0.3, 0.1, 0.2, 9.0]) == pytest.approx(5 / 6)


def _brute_ap(y, s):
    """Average over positives of the best precision at a recall >= theirs (ties: one threshold)."""
    if not any(y) or all(y):
        return float(any(y))
    points = []
    for t in sorted(set(s), reverse=True):
        tp = sum(yi for yi, si in zip(y, s, strict=True) if si >= t)
        points.append((tp / sum(y), tp / sum(si >= t for si in s)))
    best = [max(p for r, p in points if r >= recall) for recall, _ in points]
    recalls = [r for r, _ in points]
    grown = [i for i, r in enumerate(recalls) if r != (recalls[i - 1] if i else 0.0)]
    return sum(best[i] for i in grown) / len(grown)


def test_saliency_ap_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 8)
        y = [int(rng.random() < 0.4) for _ in range(n)]
        s = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        assert qvh.saliency_ap(y, s) == pytest.approx(_brute_ap(y, s))


def test_gt_saliency_odd_durations():
    # 7 s -> int(3.5) = 3 rows; unlisted rows are 0.
    m = qvh.gt_saliency(gt(1, 7, [[0, 2]], ids=[1], scores=[[1, 2, 3]]))
    assert m.tolist() == [[0, 0, 0], [1, 2, 3], [0, 0, 0]]
    # 5 s -> 2 rows, but clip 2 ([4, 6), partial) is relevant: grown to 3 rows (official crashes).
    m = qvh.gt_saliency(gt(1, 5, [[0, 2]], ids=[0, 2], scores=[[4, 4, 4], [1, 1, 1]]))
    assert m.shape == (3, 3) and m[2].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="qid 1: saliency_scores must hold 3 scores"):
        qvh.gt_saliency(gt(1, 8, [[0, 2]], ids=[0, 1], scores=[[4, 4, 4]]))


HL_GT = [
    # q1: 8 s -> 4 rows: [4,2,3], [2,2,2], [4,4,4], [0,0,0].
    gt(1, 8, [[0, 6]], ids=[0, 1, 2], scores=[[4, 2, 3], [2, 2, 2], [4, 4, 4]]),
    # q2: 7 s -> 3 rows: [2,0,3], [2,0,1], [0,0,0].
    gt(2, 7, [[0, 4]], ids=[0, 1], scores=[[2, 0, 3], [2, 0, 1]]),
    # q3: 5 s -> 2 rows grown to 3 by relevant clip 2: [4,1,2], [4,0,2], [4,0,2].
    gt(3, 5, [[0, 5]], ids=[0, 1, 2], scores=[[4, 1, 2], [4, 0, 2], [4, 0, 2]]),
]
HL_SUB = [
    {"qid": 1, "pred_saliency_scores": [0.5, 0.9, 0.9, 0.1]},  # tie: argmax is clip 1
    {"qid": 2, "pred_saliency_scores": [0.3, 0.1, 0.2, 0.9]},  # argmax clip 3: past the 3 rows
    {"qid": 3, "pred_saliency_scores": [0.1, 0.4]},  # padded to [0.1, 0.4, 0]
]


def test_highlight_metrics_hand_values():
    # Columns per level (annotators a0 a1 a2); AP from test_saliency_ap_hand_values' rules.
    # q1 (scores .5 .9 .9 .1): Fair a0=a1=a2=[1,1,1,0] -> 1, 1, 1 (sum 3);
    #    Good a0 [1,0,1,0] 2/3, a1 [0,0,1,0] 1/2, a2 [1,0,1,0] 2/3 (11/6);
    #    VeryGood a0 [1,0,1,0] 2/3, a1 [0,0,1,0] 1/2, a2 [0,0,1,0] 1/2 (5/3).
    # q2 (truncated to .3 .1 .2): Fair a0 [1,1,0] 5/6, a1 all 0 -> 0, a2 [1,0,0] 1 (11/6);
    #    Good a0 0, a1 0, a2 [1,0,0] 1 (1); VeryGood all 0 (0).
    # q3: a0 all 4 -> 1 at every level; a1 [1,0,0] -> all 0 at every level -> 0;
    #    a2 all 2 -> Fair 1, Good/VeryGood 0. Fair 2, Good 1, VeryGood 1.
    # mAP over 9 columns: Fair (3 + 11/6 + 2)/9 = 41/54 = 75.93%; Good (11/6 + 1 + 1)/9 = 23/54
    # = 42.59%; VeryGood (5/3 + 0 + 1)/9 = 8/27 = 29.63%.
    # Hit@1: q1 picks clip 1 (first of the tie) = [2,2,2]: Fair hit, Good/VeryGood miss (clip 2,
    # [4,4,4], would hit); q2 picks clip 3 >= 3 rows: miss (the truncated argmax, clip 0 [2,0,3],
    # would hit); q3 picks clip 1 [4,0,2]: hit at every level.
    out = qvh.evaluate(HL_SUB, HL_GT)
    assert set(out) == HL_KEYS  # no pred_relevant_windows: no MR keys
    assert out["HL-min-Fair-mAP"] == 75.93 and out["HL-min-Fair-Hit1"] == 66.67
    assert out["HL-min-Good-mAP"] == 42.59 and out["HL-min-Good-Hit1"] == 33.33
    assert out["HL-min-VeryGood-mAP"] == 29.63 and out["HL-min-VeryGood-Hit1"] == 33.33
    assert qvh.detailed(HL_SUB, HL_GT)["HL-min-Good"] == {"HL-mAP": 42.59, "HL-Hit1": 33.33}


# ---------------------------------------------------------------- moment retrieval


def test_moment_ap_double_match():
    # GT A [0,10], B [20,30]; predictions given out of score order.
    # Ranked: p1 [0,10] .9 (IoU A 1), p2 [0,8] .8 (IoU A .8), p3 [20,26.2] .7 (IoU B 6.2/10 = .62).
    # p1 takes A at every threshold. p2's best GT is A, already taken: the next GT, B, has IoU 0
    # -> false positive everywhere (a double match). p3 takes B when threshold <= .62.
    # thr .5/.55/.6: tp 1 0 1 -> recall .5 .5 1, precision 1 .5 2/3 -> envelope 1, 2/3:
    #   AP = .5 * 1 + .5 * 2/3 = 5/6.
    # thr >= .65: tp 1 0 0 -> recall .5 .5 .5, precision 1 .5 1/3 -> AP = .5 * 1 = .5.
    gt_w = np.array([[0, 10], [20, 30]], float)
    pred = np.array([[0, 8, 0.8], [20, 26.2, 0.7], [0, 10, 0.9]])
    ap = qvh.moment_ap(gt_w, pred)
    np.testing.assert_allclose(ap, [5 / 6] * 3 + [0.5] * 7)

    sub = [{"qid": 1, "pred_relevant_windows": pred.tolist()}]
    out = qvh.evaluate(sub, [gt(1, 40, gt_w.tolist())])
    assert set(out) == MR_KEYS  # no pred_saliency_scores: no HL keys
    # mean over thresholds (3 * 5/6 + 7 * .5) / 10 = .6; both GT windows are 10 s: short only.
    assert out["MR-full-mAP"] == 60.0 and out["MR-short-mAP"] == 60.0
    assert out["MR-full-mAP@0.5"] == 83.33 and out["MR-full-mAP@0.75"] == 50.0
    assert out["MR-middle-mAP"] is None and out["MR-long-mAP"] is None  # empty ranges
    # R1: first given window [0, 8] vs A: 8/10 = .8.
    assert out["MR-full-R1@0.5"] == 100.0 and out["MR-full-R1@0.7"] == 100.0


def test_moment_ap_equal_ious_visit_the_later_gt_first():
    # A [0,10], B [5,15]; p1 [5,10] .9 has IoU .5 with both; p2 [0,9] .8 has IoU .9 with A and
    # 4/15 with B. thr .5: p1 takes B (later index first), p2 takes A -> AP 1 (taking A first
    # would leave p2 a false positive: AP .5). thr .55-.9: p1 misses, p2 takes A: recall 0 .5,
    # precision 0 .5 -> AP .25. thr .95: nothing -> 0.
    ap = qvh.moment_ap(np.array([[0, 10], [5, 15]], float), np.array([[5, 10, 0.9], [0, 9, 0.8]]))
    np.testing.assert_allclose(ap, [1.0] + [0.25] * 8 + [0.0])


def test_moment_ap_uses_first_ten_predictions_in_given_order():
    # The perfect window is 11th in the given order, so it is dropped before ranking.
    pred = np.array([[20, 30, 0.1]] * 10 + [[0, 10, 1.0]])
    np.testing.assert_array_equal(qvh.moment_ap(np.array([[0, 10]], float), pred), 0.0)


def test_r1_picks_the_max_iou_gt():
    # First window [18, 30]: IoU with [0,10] 0, with [20,30] 10/12 -> R1 uses [20,30].
    assert qvh.r1_iou(np.array([18, 30, 1.0]), np.array([[0, 10], [20, 30]], float)) == 10 / 12
    # Second query: [0, 6] vs [0, 10] -> .6: >= .5, < .7.
    sub = [
        {"qid": 1, "pred_relevant_windows": [[18, 30, 0.2], [0, 10, 0.1]]},
        {"qid": 2, "pred_relevant_windows": [[0, 6, 1.0]]},
    ]
    out = qvh.evaluate(sub, [gt(1, 40, [[0, 10], [20, 30]]), gt(2, 40, [[0, 10]])])
    assert out["MR-full-R1@0.5"] == 100.0 and out["MR-full-R1@0.7"] == 50.0


def test_length_ranges():
    # qa: one 8 s window (short only); qb: one 40 s window (long only); qc: 6 s + 20 s windows.
    ground_truth = [
        gt("qa", 150, [[0, 8]]),
        gt("qb", 150, [[10, 50]]),
        gt("qc", 150, [[0, 6], [20, 40]]),
    ]
    sub = [
        {"qid": "qa", "pred_relevant_windows": [[0, 8, 1.0]]},  # exact: AP 1
        {"qid": "qb", "pred_relevant_windows": [[10, 30, 1.0]]},  # IoU .5: AP 1 at .5 only
        {"qid": "qc", "pred_relevant_windows": [[20, 40, 0.9], [0, 6, 0.5]]},
    ]
    out = qvh.detailed(sub, ground_truth)
    # short: qa 1; qc keeps [0,6]: miss then hit -> recall 0 1, precision 0 .5 -> .5. Mean .75.
    assert out["short"]["queries"] == 2 and out["brief"]["MR-short-mAP"] == 75.0
    # middle: qc keeps [20,40]: hit then miss -> 1.
    assert out["middle"]["queries"] == 1 and out["brief"]["MR-middle-mAP"] == 100.0
    # long: qb alone (qa is not there): AP 1 at .5, 0 above -> .1.
    assert out["long"]["queries"] == 1 and out["brief"]["MR-long-mAP"] == 10.0
    # full: qa 1, qb 1 at .5 else 0, qc 1 -> (1 + 9 * 2/3) / 10 = .7.
    assert out["brief"]["MR-full-mAP"] == 70.0 and out["brief"]["MR-full-mAP@0.75"] == 66.67
    # R1: qa 1, qb .5, qc 1. In the short range qc's first window [20,40] meets only [0,6]: 0.
    assert out["brief"]["MR-full-R1@0.5"] == 100.0 and out["brief"]["MR-full-R1@0.7"] == 66.67
    assert out["short"]["MR-R1"]["0.5"] == 50.0


def test_mr_and_hl_together_and_decided_by_the_first_row():
    sub = [dict(s, pred_relevant_windows=[[0, 6, 1.0]]) for s in HL_SUB]
    out = qvh.evaluate(sub, HL_GT)
    assert set(out) == MR_KEYS | HL_KEYS and out["HL-min-Fair-mAP"] == 75.93
    # q1 exact; q2 [0,6] vs [0,4] = 2/3; q3 [0,6] vs [0,5] = 5/6.
    assert out["MR-full-R1@0.5"] == 100.0 and out["MR-full-R1@0.7"] == 66.67
    # the first row has no windows: MR is skipped even though later rows have them
    assert set(qvh.evaluate([HL_SUB[0], *sub[1:]], HL_GT)) == HL_KEYS
    # the first row has windows: then every row needs them
    with pytest.raises(ValueError, match="qid 2: prediction lacks field pred_relevant_windows"):
        qvh.evaluate([sub[0], HL_SUB[1], sub[2]], HL_GT)


# ---------------------------------------------------------------- matching and loading


def test_match_number():
    ground_truth = [gt(1, 20, [[0, 10]]), gt(3, 20, [[0, 10]])]
    sub = [
        {"qid": 1, "pred_relevant_windows": [[0, 10, 1.0]]},
        {"qid": 2, "pred_relevant_windows": [[0, 10, 1.0]]},
    ]
    with pytest.raises(ValueError, match=r"1 missing from the submission \(3\), 1 not in .*\(2\)"):
        qvh.evaluate(sub, ground_truth)
    out = qvh.evaluate(sub, ground_truth, match_number=False)  # only qid 1: perfect
    assert out["MR-full-mAP"] == 100.0 and out["MR-full-R1@0.7"] == 100.0
    with pytest.raises(ValueError, match="share no qid"):
        qvh.evaluate(sub[1:], ground_truth, match_number=False)
    with pytest.raises(ValueError, match="duplicate qid 1 in submission"):
        qvh.evaluate([sub[0], sub[0]], ground_truth[:1])


def test_read_jsonl(tmp_path):
    gt_path, pred_path = tmp_path / "gt.jsonl", tmp_path / "preds.jsonl"
    rows = [gt(1, 20, [[0, 10]]), gt(2, 20, [[2, 4]])]
    gt_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert qvh.read_jsonl(gt_path, "ground_truth") == rows
    gt_path.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"gt.jsonl:2: bad JSON"):
        qvh.read_jsonl(gt_path, "ground_truth")
    bad = {k: v for k, v in rows[1].items() if k != "duration"}
    gt_path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"gt.jsonl:2: ground truth lacks field duration"):
        qvh.read_jsonl(gt_path, "ground_truth")

    pred_path.write_text('{"qid": 1, "pred_saliency_scores": [0.5]}\n{"qid": 2}\n')
    with pytest.raises(ValueError, match=r"preds.jsonl:2: qid 2: prediction needs field"):
        qvh.read_jsonl(pred_path, "submission")
    pred_path.write_text('{"qid": 7, "pred_relevant_windows": []}\n')
    with pytest.raises(ValueError, match=r"preds.jsonl:1: qid 7: pred_relevant_windows must be"):
        qvh.read_jsonl(pred_path, "submission")
    pred_path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"preds.jsonl:1: expected a JSON object"):
        qvh.read_jsonl(pred_path, "submission")
    with pytest.raises(ValueError, match="what must be"):
        qvh.read_jsonl(pred_path, "predictions")


# ---------------------------------------------------------------- building a submission row


def test_to_clip():
    assert [qvh.to_clip(t) for t in (0, 1.9, 2, 5.99, 82)] == [0, 0, 1, 2, 41]


def test_submission_record_from_highlights():
    # 7 s -> ceil(3.5) = 4 clip scores. 0.5 s and 1.5 s -> clip 0 (max 2.0); 2.5 s -> clip 1;
    # 4 s -> clip 2 with score 0 (not positive); 6.5 s -> clip 3, the partial last clip, kept;
    # 7 s and -1 s are outside [0, 7): dropped.
    highlights = [(0.5, 1.0), (1.5, 2.0), (2.5, 1.0), (4, 0.0), (6.5, 3.0), (7.0, 9.0), (-1, 5)]
    row = qvh.submission_record("q", 7, highlights=highlights)
    assert row["qid"] == "q" and row["pred_saliency_scores"] == [2.0, 1.0, 0.0, 3.0]
    # Runs of positive clips: 0-1 -> [0, 4, 2.0]; 3 -> [6, min(8, 7), 3.0]; best score first.
    assert row["pred_relevant_windows"] == [[6.0, 7.0, 3.0], [0.0, 4.0, 2.0]]


def test_submission_record_windows_and_empty():
    # Unscored windows keep their order (scores 1, 1/2); reversed ones are swapped.
    row = qvh.submission_record(1, 150, windows=[(10, 4), (1, 3)])
    assert row["pred_relevant_windows"] == [[4.0, 10.0, 1.0], [1.0, 3.0, 0.5]]
    assert row["pred_saliency_scores"] == [0.0] * 75
    # Scored windows are ranked by score.
    row = qvh.submission_record(1, 150, windows=[(0, 2, 0.3), (4, 6, 0.9)])
    assert row["pred_relevant_windows"] == [[4.0, 6.0, 0.9], [0.0, 2.0, 0.3]]
    # Nothing parsed: one empty window keeps the format valid and scores IoU 0.
    row = qvh.submission_record(1, 5, windows=[], highlights=[])
    assert row["pred_relevant_windows"] == [[0.0, 0.0, 0.0]]
    assert row["pred_saliency_scores"] == [0.0, 0.0, 0.0]
    out = qvh.evaluate([row], [gt(1, 5, [[0, 4]])])
    assert out["MR-full-mAP"] == 0.0 and out["MR-full-R1@0.5"] == 0.0
    with pytest.raises(ValueError, match="duration must be positive"):
        qvh.submission_record(1, 0)


# ---------------------------------------------------------------- highlight parser


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        (
            "The highlight timestamps are in the 82, 84, 86 seconds. "
            "Their saliency scores are 1.3, 1.7, 1.7.",
            [(82.0, 1.3), (84.0, 1.7), (86.0, 1.7)],
        ),
        (
            "The highlight timestamps are in the 82, 84, 86 seconds. "
            "Their saliency scores are 1.3.",
            [(82.0, 1.3)],
        ),
        ("The highlight timestamps are in the 10, 12 seconds.", [(10.0, 1.0), (12.0, 1.0)]),
        (
            "The highlight timestamps are in the 1:22, 1:24 seconds. "
            "Their saliency scores are 3, 4.",
            [(82.0, 3.0), (84.0, 4.0)],
        ),
        ("82s: 1.3, 84 s: 1.7", [(82.0, 1.3), (84.0, 1.7)]),
        ("82 seconds (score 1.3), 1:30 (score 2)", [(82.0, 1.3), (90.0, 2.0)]),
        ("The best moment is at 12:30.", [(750.0, 1.0)]),  # a clock, not the pair 12: 30
        ("no highlights", []),
        ("", []),
        (None, []),
    ],
)
def test_parse_highlights(text, pairs):
    assert parse_highlights(text) == pairs


def _check_pairs(pairs):
    for t, s in pairs:
        assert isinstance(t, float) and isinstance(s, float)
        assert math.isfinite(t) and math.isfinite(s) and t >= 0


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_highlights_never_raises(text):
    _check_pairs(parse_highlights(text))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "82",
                "1:22",
                "9" * 400,
                "1.3",
                "-",
                ":",
                ",",
                " ",
                "s",
                "seconds",
                "(score",
                ")",
                "scores are",
                "saliency",
                ".",
                "e5",
            ]
        )
    )
)
def test_parse_highlights_never_raises_on_near_misses(tokens):
    _check_pairs(parse_highlights("".join(tokens)))
