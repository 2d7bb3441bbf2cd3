"""TEMPURA's lmms-eval task folder without lmms-eval: the docs and task files
`tempura-lmms-tasks` writes, the prompts each protocol sends, and the hooks'
scores against `launch/eval.py`'s own scoring of the same answers."""

import json
from pathlib import Path

import pytest

from tempura_jax.eval import benchmarks
from tempura_jax.inference import tasks
from tempura_jax.lmms import task_folder
from tempura_jax.lmms.tasks import utils
from tempura_jax.reference_prompts import VHD_FT, VTG


@pytest.fixture(scope="module")
def folders(demo_data, tmp_path_factory):
    media = Path(demo_data["media_root"])
    out = {}
    for prompts in ("ours", "tempura_paper"):
        root = tmp_path_factory.mktemp(prompts)
        argv = [str(root), "--prompts", prompts, "--charades", demo_data["charades"],
                "--charades-videos", str(media / "videos"), "--qvhighlights",
                demo_data["qvhighlights"], "--qvhighlights-videos", str(media / "videos"),
                "--dvc", demo_data["stage2"]]  # fmt: skip
        assert task_folder.main(argv) == 0
        out[prompts] = root
    return out


def _docs(root: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (root / "data" / f"{name}.jsonl").read_text().splitlines()]


def test_task_files_name_their_protocol_and_include_the_template(folders, demo_data):
    ours, paper = folders["ours"], folders["tempura_paper"]
    assert sorted(p.name for p in ours.glob("*.yaml")) == [
        "tempura_charades_sta.yaml", "tempura_dvc.yaml", "tempura_qvhighlights.yaml"]  # fmt: skip
    assert sorted(p.name for p in paper.glob("*.yaml")) == [
        "tempura_charades_sta_tempura_paper.yaml", "tempura_dvc.yaml",
        "tempura_qvhighlights_tempura_paper.yaml"]  # fmt: skip
    text = (paper / "tempura_charades_sta_tempura_paper.yaml").read_text()
    assert f"include: {json.dumps(str(task_folder.template('charades')))}" in text
    assert "max_new_tokens: 512" in text  # the reference's budget for its JSON answers
    assert "max_new_tokens: 64" in (ours / "tempura_charades_sta.yaml").read_text()
    docs = _docs(paper, "tempura_charades_sta_tempura_paper")
    n = len(Path(demo_data["charades"]).read_text().splitlines())
    assert len(docs) == n and {d["task"] for d in docs} == {"vtg"}
    assert all(Path(d["video"]).is_file() for d in docs)
    assert utils.doc_to_text(docs[0]) == VTG.replace("<your_query>", docs[0]["query"])
    qvh = _docs(paper, "tempura_qvhighlights_tempura_paper")
    assert utils.doc_to_text(qvh[0]) == VHD_FT.replace("<your_query>", qvh[0]["query"])
    ours_docs = _docs(ours, "tempura_charades_sta")
    assert utils.doc_to_text(ours_docs[0]) == tasks.get("grounding").text(ours_docs[0]["query"])
    dense = _docs(ours, "tempura_dvc")
    assert utils.doc_to_text(dense[0]) == tasks.get("dense").text()


def test_templates_list_every_metric_with_its_aggregation():
    for bench, metrics in utils.METRICS.items():
        text = task_folder.template(bench).read_text()
        for name in metrics:
            agg = utils.aggregation_name(bench, name)
            assert f"- metric: {name}\n    aggregation: !function utils.{agg}\n" in text
            assert callable(getattr(utils, agg))


def test_hook_scores_equal_launch_eval_scoring(folders, demo_data):
    root = folders["ours"]
    docs = _docs(root, "tempura_charades_sta")
    # Answers: the truth for even queries, a shifted window for odd ones, junk for the last.
    lines = Path(demo_data["charades"]).read_text().splitlines()
    answers = []
    for i, line in enumerate(lines):
        _, a, b = line.split("##")[0].split()
        a, b = float(a), float(b)
        answers.append(f"From {a} to {b} seconds." if i % 2 == 0 else f"From {a + 1} to {b + 3}.")
    answers[-1] = "no idea"
    items = [
        utils.process_results(d, [a])["mIoU_first"] for d, a in zip(docs, answers, strict=True)
    ]
    rows = [
        {"id": d["id"], "answer": a, "windows": tasks.get("grounding").parse(a)["windows"]}
        for d, a in zip(docs, answers, strict=True)
    ]
    bench = benchmarks.get("charades")
    ann, videos = Path(demo_data["charades"]), Path(demo_data["media_root"]) / "videos"
    for protocol in ("first", "any"):
        want = bench.score(rows, ann, videos, {"protocol": protocol})
        for key in ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7"):
            agg = getattr(utils, utils.aggregation_name("charades", f"{key}_{protocol}"))
            assert agg(items) == pytest.approx(want[key])
    assert 0 < want["mIoU"] < 100
    # QVHighlights: one answer per query naming two clip times.
    qdocs = _docs(root, "tempura_qvhighlights")
    answers = [
        f"The highlight timestamps are in the {2 * i % 8}, {2 * i % 8 + 2} seconds. "
        "Their saliency scores are 3, 4."
        for i in range(len(qdocs))
    ]
    items = [utils.process_results(d, [a]) for d, a in zip(qdocs, answers, strict=True)]
    ctx = benchmarks.get("qvhighlights").context(Path(demo_data["qvhighlights"]))
    rows = []
    for d, a in zip(qdocs, answers, strict=True):
        case = utils._case(d)
        pred = utils.Prediction(d["id"], d["video"], "highlight", d["query"], a,
                                tasks.get("highlight").parse(a))  # fmt: skip
        rows.append(benchmarks.get("qvhighlights").row(case, pred, ctx))
    want = benchmarks.get("qvhighlights").score(rows, Path(demo_data["qvhighlights"]), videos, {})
    for key in ("HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "MR-full-mAP"):
        agg = getattr(utils, utils.aggregation_name("qvhighlights", key))
        assert agg([i[key] for i in items]) == pytest.approx(want[key])


def test_bad_input_is_named(tmp_path, demo_data):
    with pytest.raises(ValueError, match="unknown prompt protocol 'paper'"):
        task_folder.write_task_folder(tmp_path, charades=(Path(demo_data["charades"]), tmp_path),
                                      prompts="paper")  # fmt: skip
    empty = tmp_path / "charades_sta_test.txt"
    empty.write_text("")
    assert task_folder.main([str(tmp_path / "o"), "--charades", str(empty)]) == 2
