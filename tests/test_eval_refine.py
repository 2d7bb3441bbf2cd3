"""The reference's second, text-only pass: window widening and selection, text
prompts batched like video ones, and `launch/eval.py --refine` on the tiny model."""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import demo_data_config
from flax import nnx

from tempura_jax.config import tiny
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.eval import refine
from tempura_jax.inference import infer
from tempura_jax.inference.generate import SamplingConfig
from tempura_jax.inference.infer import Predictor
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL
from tempura_jax.reference_prompts import VTG_REFINE

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("launch_eval_r", REPO / "launch" / "eval.py")
launch_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_eval)


def test_widen_and_select():
    assert refine.widen([[1, 2], [10, 11], [3, 9]], 4.0) == [[0.0, 4.0], [8.5, 12.5], [3.0, 9.0]]
    first, refined = [[0, 4]], [[5, 9]]
    assert refine.final_windows(first, refined) == first  # vtg_first: the reference's default
    assert refine.final_windows([], refined) == refined
    assert refine.final_windows(first, refined, "refined") == refined
    assert refine.final_windows(first, [], "refined") == first
    assert refine.final_windows([], refined, "vtg") == []
    with pytest.raises(ValueError, match="unknown refine mode 'best'"):
        refine.final_windows(first, refined, "best")
    text = refine.vtg_prompt("From 0 to 3, a cat.", "the cat", [[0.0, 4.0], [8.5, 12.5]], 4.0)
    assert text == VTG_REFINE.format(dense_caption="From 0 to 3, a cat.", query="the cat",
                                     windows="[[0.0, 4.0], [8.5, 12.5]]",
                                     min_window_duration=4.0)  # fmt: skip


@pytest.fixture(scope="module")
def predictor(demo_data):
    model = Qwen2_5_VL(tiny().replace(compute_dtype="float32"), rngs=nnx.Rngs(0))
    cfg = demo_data_config(demo_data)
    return Predictor(model, Tokenizer(cfg.tokenizer), cfg, SamplingConfig(max_new_tokens=6), 2)


def test_text_answers_do_not_depend_on_batch_padding(predictor):
    prompts = ["a red square moves", "where is the blue circle in the video now"]
    both = refine.text_answers(predictor, prompts, 6)
    alone = refine.text_answers(predictor, prompts[1:], 6)  # padded with a copy of itself
    assert both[1] == alone[0] and all(isinstance(a, str) for a in both)


def test_launch_eval_refine_rewrites_rows(demo_data, predictor, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(infer, "load_from_arguments", lambda args, sampling: predictor)
    monkeypatch.setattr(refine, "DVC_TOKENS", 8)
    monkeypatch.setattr(refine, "REFINE_TOKENS", {"grounding": 8, "highlight": 8})
    # The random model may caption nothing (then the reference skips refining): fill in.
    real = refine.dense_captions
    filled = lambda p, c, n: {k: v or "From 0 to 2, a shape." for k, v in real(p, c, n).items()}  # noqa: E731
    monkeypatch.setattr(refine, "dense_captions", filled)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    preds = tmp_path / "p.jsonl"
    argv = ["--task", "charades", "--annotations", demo_data["charades"], "--checkpoint",
            str(ckpt), "--videos", str(Path(demo_data["media_root"]) / "videos"),
            "--predictions", str(preds), "--limit", "3", "--max-new-tokens", "6",
            "--refine", "vtg_first"]  # fmt: skip
    assert launch_eval.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompts"] == "ours+refine" and out["queries"] == 3
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    for r in rows:
        assert {"answer", "refine_answer", "dense_caption", "windows"} <= set(r)
        assert r["refine_mode"] == "vtg_first" and r["dense_caption"]
        assert all(b - a >= 4.0 - 1e-6 for a, b in r["windows"])
    # A rerun finds every row refined and runs nothing.
    monkeypatch.setattr(infer, "load_from_arguments", lambda args, sampling: pytest.fail("ran"))
    assert launch_eval.main(argv) == 0
    assert "refining 0 answers" in capsys.readouterr().err


def test_highlight_refine_keeps_the_first_answer_unless_the_reply_parses(monkeypatch):
    cases = [infer.Case(video="v.mp4", task="vhd_ft", query="a dog", id=str(i)) for i in range(2)]
    first = "The highlight timestamps are in the 2, 4 seconds. Their saliency scores are 3, 4."
    monkeypatch.setattr(refine, "dense_captions", lambda p, c, n: {"v.mp4": "From 0 to 6, a dog."})
    asked = []

    def replies(predictor, prompts, budget):
        asked.extend(prompts)
        return ["The highlight timestamps are in the 8 seconds. Their saliency scores are 5.", "?"]

    monkeypatch.setattr(refine, "text_answers", replies)
    rows = refine.refine(None, cases, [first, first], durations=[30.0, 30.0])
    assert asked[0] == refine.vhd_prompt("From 0 to 6, a dog.", "a dog", first, 30.0)
    assert "I have a 30-second video" in asked[0]
    assert rows[0]["highlights"] == [[8.0, 5.0]]  # the refined answer parsed
    assert rows[1]["highlights"] == [[2.0, 3.0], [4.0, 4.0]]  # unparsable: the first stays
    assert rows[1]["refine_answer"] == "?" and rows[0]["dense_caption"] == "From 0 to 6, a dog."
    with pytest.raises(ValueError, match="need the video durations"):
        refine.refine(None, cases, [first, first])
