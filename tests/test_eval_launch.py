"""launch/eval.py without a model: resuming (settings sidecar, retried errors) and --out."""

import json
import os

import pytest
from conftest import qvh_one_query

from tempura_jax.cli import eval as launch_eval
from tempura_jax.inference import infer
from tempura_jax.inference.infer import Prediction


class FakePredictor:
    """Answers every grounding query with [0, 4]; ids in `fail` come back with an error."""

    def __init__(self, fail=()):
        self.fail, self.ran = set(fail), []

    def run(self, cases, progress=None):
        for c in cases:
            self.ran.append(c.id)
            if c.id in self.fail:
                yield Prediction(c.id, c.video, c.task, c.query, None, {}, error="unreadable")
            else:
                yield Prediction(c.id, c.video, c.task, c.query, "0 to 4", {"windows": [[0, 4]]})
            if progress:
                progress(1)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A Charades file of three queries, a checkpoint folder, and a way to run
    launch/eval.py with a fake predictor: (run(*extra, fail=()) -> (rc, predictor), paths)."""
    ann = tmp_path / "charades_sta_test.txt"
    ann.write_text("v1 0.0 4.0##a man sits\nv1 4.0 10.0##he stands\nv2 2.0 6.0##a dog\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"step 1")
    preds = tmp_path / "p.jsonl"

    def run(*extra, fail=()):
        predictor = FakePredictor(fail)
        monkeypatch.setattr(infer, "load_from_arguments", lambda args, sampling: predictor)
        argv = ["--task", "charades", "--annotations", str(ann), "--checkpoint", str(ckpt),
                "--predictions", str(preds), "--max-new-tokens", "32", *extra]  # fmt: skip
        return launch_eval.main(argv), predictor

    return run, ckpt, preds


def test_rows_with_an_error_are_run_again(setup, capsys):
    run, _, preds = setup
    rc, first = run(fail={"1"})
    assert rc == 0 and first.ran == ["0", "1", "2"]
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2"] and rows[1]["error"] == "unreadable"
    meta = json.loads(launch_eval.meta_path(preds).read_text())
    assert meta["task"] == "charades" and meta["sampling.max_new_tokens"] == 32
    capsys.readouterr()
    rc, second = run()
    assert rc == 0 and second.ran == ["1"]
    assert "retrying 1 rows with an error" in capsys.readouterr().err
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["0", "1", "2"]
    assert not any("error" in r for r in rows)
    rc, third = run()
    assert rc == 0 and third.ran == []


def test_resume_refuses_other_settings(setup, capsys):
    run, ckpt, preds = setup
    assert run("--limit", "1")[0] == 0
    capsys.readouterr()
    rc, p = run("--max-new-tokens", "64")  # the later flag wins
    err = capsys.readouterr().err
    assert rc == 2 and p.ran == [] and "sampling.max_new_tokens: 32 there, 64 now" in err
    assert "--overwrite" in err

    weights = ckpt / "weights.bin"
    weights.write_bytes(b"step 2")  # retrained in place: same path, new files
    os.utime(weights, ns=(1, 1))
    rc, p = run()
    err = capsys.readouterr().err
    assert rc == 2 and p.ran == [] and "checkpoint_files" in err
    assert "checkpoint:" not in err  # only what differs is named

    rc, p = run("--overwrite")
    assert rc == 0 and p.ran == ["0", "1", "2"]
    assert len(preds.read_text().splitlines()) == 3
    rc, p = run()
    assert rc == 0 and p.ran == []  # the new settings were recorded


def test_predictions_without_a_record_are_not_resumed(setup, capsys):
    run, _, preds = setup
    preds.write_text('{"id": "0", "windows": [[0, 4]]}\n')
    rc, p = run()
    assert rc == 2 and p.ran == [] and "p.jsonl.meta.json" in capsys.readouterr().err


def test_qvhighlights_out_gets_the_detailed_metrics(tmp_path, capsys):
    ann = qvh_one_query(tmp_path)
    row = {"qid": 7, "id": "7", "pred_relevant_windows": [[2, 6, 1.0]],
           "pred_saliency_scores": [0, 1, 0, 0, 0]}  # fmt: skip
    preds = tmp_path / "sub.jsonl"
    preds.write_text(json.dumps(row) + "\n")
    out = tmp_path / "m.json"
    argv = ["--task", "qvhighlights", "--annotations", str(ann), "--predictions", str(preds),
            "--out", str(out)]  # fmt: skip
    assert launch_eval.main(argv) == 0
    brief = json.loads(capsys.readouterr().out)
    detailed = json.loads(out.read_text())
    assert detailed["brief"] == brief and brief["MR-full-mAP"] == 100.0
    assert detailed["full"]["MR-R1"]["0.95"] == 100.0 and detailed["short"]["queries"] == 1
    assert detailed["HL-min-VeryGood"]["HL-Hit1"] == 100.0
    assert "MR-windows" not in brief  # these windows were the submission's own


def test_paper_prompts_are_run_recorded_and_reported(tmp_path, monkeypatch, capsys):
    ann = tmp_path / "charades_sta_test.txt"
    ann.write_text("v1 0.0 4.0##a man sits\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    preds = tmp_path / "p.jsonl"
    predictor = FakePredictor()
    seen = {}

    def load(args, sampling):
        seen["max_new_tokens"] = sampling.max_new_tokens
        return predictor

    monkeypatch.setattr(infer, "load_from_arguments", load)
    real_run = predictor.run

    def run(cases, progress=None):
        seen["tasks"] = [c.task for c in cases]
        return real_run(cases, progress)

    predictor.run = run
    argv = ["--task", "charades", "--annotations", str(ann), "--checkpoint", str(ckpt),
            "--predictions", str(preds), "--prompts", "tempura_paper"]  # fmt: skip
    assert launch_eval.main(argv) == 0
    assert seen == {"max_new_tokens": 512, "tasks": ["vtg"]}  # the reference's VTG and budget
    assert json.loads(capsys.readouterr().out)["prompts"] == "tempura_paper"
    assert json.loads(launch_eval.meta_path(preds).read_text())["prompts"] == "tempura_paper"
    # Scoring the file later reports the protocol that made it, not the flag's default.
    assert launch_eval.main(["--task", "charades", "--annotations", str(ann),
                             "--predictions", str(preds)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["prompts"] == "tempura_paper"
