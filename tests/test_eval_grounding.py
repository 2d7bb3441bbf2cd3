"""Grounding answers -> windows -> Charades-STA metrics (hand-computed values)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempura_jax.eval import charades
from tempura_jax.eval.parsing import parse_windows, to_seconds


@pytest.mark.parametrize(
    ("text", "windows"),
    [
        ("The event happens from 12.5 to 20 seconds.", [(12.5, 20.0)]),
        ("[[3, 7.5], [10, 12]]", [(3.0, 7.5), (10.0, 12.0)]),
        ("It is between 4s and 9s, maybe 30 - 35.", [(4.0, 9.0), (30.0, 35.0)]),
        ("0:45 to 1:02", [(45.0, 62.0)]),
        ("From 1:00:05 until 1:00:10.5 s", [(3605.0, 3610.5)]),
        ("reversed: [9, 2]", [(9.0, 2.0)]),
        ("no times here, only 42 things", []),
        ("", []),
    ],
)
def test_parse_windows(text, windows):
    assert parse_windows(text) == windows


def test_to_seconds():
    assert to_seconds("1:05") == 65.0 and to_seconds("12.5 seconds") == 12.5
    assert to_seconds("a:b") is None and to_seconds("") is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises_on_any_text(text):
    for start, end in parse_windows(text):
        assert start >= 0 and end >= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["from", "to", "[", "]", ",", "-", ":", "1", "2.5", "s", " "])))
def test_parser_never_raises_on_near_misses(tokens):
    parse_windows("".join(tokens))


def test_metrics_first_and_any_protocols():
    gt = [(0.0, 10.0), (5.0, 15.0), (2.0, 4.0), (0.0, 8.0)]
    preds = [
        [(0.0, 5.0), (0.0, 10.0)],  # first 0.5, any 1.0
        [(15.0, 5.0)],  # reversed: swapped -> 1.0
        [],  # unparsed: IoU 0, still counted
        [(4.0, 12.0), (0.0, 6.0)],  # first 4/12, any 6/8
    ]
    first = charades.metrics(preds, gt, "first")
    assert first["protocol"] == "first" and first["queries"] == 4 and first["unparsed"] == 1
    assert first["mIoU"] == pytest.approx(100 * (0.5 + 1.0 + 0.0 + 1 / 3) / 4)
    assert first["R1@0.3"] == 75.0 and first["R1@0.5"] == 50.0 and first["R1@0.7"] == 25.0
    any_ = charades.metrics(preds, gt, "any")
    assert any_["mIoU"] == pytest.approx(100 * (1.0 + 1.0 + 0.0 + 0.75) / 4)
    assert any_["R1@0.3"] == 75.0 and any_["R1@0.5"] == 75.0 and any_["R1@0.7"] == 75.0


def test_metrics_refuse_bad_calls():
    with pytest.raises(ValueError, match="unknown protocol 'best'"):
        charades.metrics([[]], [(0, 1)], "best")
    with pytest.raises(ValueError, match="2 predictions for 1 queries"):
        charades.metrics([[], []], [(0, 1)])


def test_read_annotations(tmp_path):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text("3MSZA 24.3 30.4##person turns on the light.\n\nAB12 0 5.5##a man sits\n")
    qs = charades.read_annotations(path)
    assert qs == [
        charades.Query("3MSZA", 24.3, 30.4, "person turns on the light."),
        charades.Query("AB12", 0.0, 5.5, "a man sits"),
    ]
    path.write_text("3MSZA 24.3 30.4##ok\nBAD 1 x##broken\n")
    with pytest.raises(ValueError, match=r"charades_sta_test.txt:2: .*'BAD 1 x##broken'"):
        charades.read_annotations(path)
