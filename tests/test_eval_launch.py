"""launch/eval.py without a model: --out."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("launch_eval", REPO / "launch" / "eval.py")
launch_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_eval)


def test_qvhighlights_out_gets_the_detailed_metrics(tmp_path, capsys):
    ann = tmp_path / "highlight_val_release.jsonl"
    gt = {
        "qid": 7, "query": "a dog", "duration": 9, "vid": "vid_a",
        "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 4, 4], [2, 3, 4]],
        "relevant_windows": [[2, 6]],
    }  # fmt: skip
    ann.write_text(json.dumps(gt) + "\n")
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
