"""lmms-eval on the tiny random model, offline, in one CLI run: Video-MME, MVBench,
MLVU and LongVideoBench through their own task files and utils (local docs in
each benchmark's own format, demo videos laid out under HF_HOME as those utils
expect), and TEMPURA's three tasks from `tempura-lmms-tasks`. Every reported
score is recomputed from the logged answers.

Needs the `[lmms]` extra (its own venv in CI: `.ci/run`); skipped without it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

from tempura_jax.eval import charades, qvhighlights  # noqa: E402
from tempura_jax.eval.benchmarks import get as bench  # noqa: E402
from tempura_jax.eval.parsing import parse_highlights, parse_windows  # noqa: E402
from tempura_jax.lmms.task_folder import write_task_folder  # noqa: E402

LMMS_TASKS = Path(lmms_eval.__file__).parent / "tasks"
LIMIT = 4  # queries per task


def _yaml(path: Path, include: Path, task: str, split: str, docs: Path, extra: str = "") -> None:
    path.write_text(
        f"include: {json.dumps(str(include))}\ntask: {task}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {json.dumps(str(docs))}\n{extra}"
    )


def _docs(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _place(video: Path, *where: Path) -> None:
    for w in where:
        w.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, w)


def external_fixtures(root: Path, hf_home: Path, videos: list[Path]) -> dict[str, str]:
    """Docs and task files for the four video benchmarks; task name -> lmms-eval's own file."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    v0, v1 = videos[0], videos[1]
    # Video-MME: fixed duration/domain/sub_category/task_type lists in its utils.
    _place(v0, hf_home / "videomme" / "data" / "vm0.mp4")
    _place(v1, hf_home / "videomme" / "data" / "vm1.mp4")
    opts = ["A. a red square", "B. a blue circle", "C. a green bar", "D. nothing"]
    vm = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge",
         "sub_category": "Humanity & History", "url": "", "videoID": vid,
         "question_id": f"001-{i}", "task_type": "Object Recognition",
         "question": f"What moves in the video ({i})?", "options": opts, "answer": ans}
        for i, (vid, ans) in enumerate([("vm0", "A"), ("vm1", "C"), ("vm0", "D")])
    ]  # fmt: skip
    _yaml(tasks / "fixture_videomme.yaml", LMMS_TASKS / "videomme" / "videomme.yaml",
          "fixture_videomme", "test", _docs(root / "videomme.jsonl", vm))  # fmt: skip
    # MVBench (action_antonym): videos under mvbench_video/ssv2_video_mp4/.
    _place(v0, hf_home / "mvbench_video" / "ssv2_video_mp4" / "mv0.mp4")
    mv = [
        {"video": "mv0.mp4", "question": "What is the action?", "candidates": c, "answer": a}
        for c, a in [(["moving up", "moving down", "not sure"], "moving down"),
                     (["opening", "closing", "not sure"], "opening")]
    ]  # fmt: skip
    _yaml(tasks / "fixture_mvbench.yaml", LMMS_TASKS / "mvbench" / "mvbench_action_antonym.yaml",
          "fixture_mvbench", "train", _docs(root / "mvbench.jsonl", mv),
          "dataset_name: null\n")  # fmt: skip
    # MLVU (dev): videos under mlvu/, task types from its fixed set.
    _place(v1, hf_home / "mlvu" / "ml0.mp4")
    ml = [
        {"video_name": "ml0.mp4", "duration": 12.0, "question": q, "candidates": [],
         "answer": a, "question_type": t, "task_type": t}
        for q, a, t in [("How many shapes?\n(A) 1\n(B) 2\n(C) 3\n(D) 4", "B", "count"),
                        ("Which first?\n(A) red\n(B) blue\n(C) green\n(D) none", "A", "order")]
    ]  # fmt: skip
    _yaml(tasks / "fixture_mlvu.yaml", LMMS_TASKS / "mlvu" / "mlvu_dev.yaml",
          "fixture_mlvu", "test", _docs(root / "mlvu.jsonl", ml))  # fmt: skip
    # LongVideoBench (val, video input): videos under datasets/longvideobench/videos/.
    _place(v0, hf_home / "datasets" / "longvideobench" / "videos" / "lv0.mp4")
    lv = [
        {"id": f"lv-{i}", "video_id": "lv0", "video_path": "lv0.mp4", "duration": 12.0,
         "duration_group": 15, "question_category": cat, "question": "What happens?",
         "option0": "a shape moves", "option1": "nothing", "option2": "a dog runs",
         "option3": "N/A", "option4": "N/A", "correct_choice": c, "subtitle_path": "",
         "starting_timestamp_for_subtitles": 0, "view_count": 0, "level": "L1-Perception",
         "topic_category": "NP-News-Programs"}
        for i, (cat, c) in enumerate([("S2E", 0), ("T3O", 2)])
    ]  # fmt: skip
    _yaml(tasks / "fixture_lvb.yaml", LMMS_TASKS / "longvideobench" / "longvideobench_val_v.yaml",
          "fixture_lvb", "validation", _docs(root / "lvb.jsonl", lv))  # fmt: skip
    return {"fixture_videomme": "videomme", "fixture_mvbench": "mvbench",
            "fixture_mlvu": "mlvu", "fixture_lvb": "longvideobench"}  # fmt: skip


@pytest.fixture(scope="module")
def lmms_run(demo_data, tmp_path_factory):
    """One lmms-eval CLI run over all seven tasks: (results, samples by task, tasks folder)."""
    from tempura_jax.config import tiny
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    root = tmp_path_factory.mktemp("lmms")
    ckpt = root / "ckpt"
    write_random_hf_checkpoint(tiny(), ckpt, dtype="float32")
    for f in Path(demo_data["tokenizer"]).iterdir():
        shutil.copy(f, ckpt / f.name)
    media = Path(demo_data["media_root"])
    videos = sorted((media / "videos").glob("*.mp4"))
    hf_home = root / "hf"
    external = external_fixtures(root, hf_home, videos)
    ours = write_task_folder(
        root / "tasks",
        charades=(Path(demo_data["charades"]), media / "videos"),
        qvhighlights=(Path(demo_data["qvhighlights"]), media / "videos"),
        dvc=(Path(demo_data["stage2"]), media),
    )
    assert ours == ["tempura_charades_sta", "tempura_qvhighlights", "tempura_dvc"]
    out = root / "out"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}  # fmt: skip
    cmd = [
        sys.executable, "-m", "lmms_eval", "--model", "tempura_jax",
        # A random model's logits peak on its last prompt token ("\n", stripped away):
        # sampling hot gives varied text (seeded, so the run repeats).
        "--model_args", f"checkpoint={ckpt},max_new_tokens=16,max_pixels=6272,temperature=20",
        "--batch_size", "4",
        "--tasks", ",".join([*external, *ours]), "--include_path", str(root / "tasks"),
        "--limit", str(LIMIT), "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    found = list(out.rglob("*_results.json"))
    assert len(found) == 1, proc.stdout[-3000:] + proc.stderr[-6000:]
    (results,) = found
    samples = {}
    for task in [*external, *ours]:
        (path,) = out.rglob(f"*_samples_{task}.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    for task in ours:  # the logged samples name their doc by index only
        docs = (root / "tasks" / "data" / f"{task}.jsonl").read_text().splitlines()
        for s in samples[task]:
            s["doc"] = json.loads(docs[s["doc_id"]])
    return json.loads(results.read_text())["results"], samples, root / "tasks"


def _score(results: dict, task: str, metric: str) -> float:
    return results[task][f"{metric},none"]


def _answer(sample: dict) -> str:
    resp = sample["filtered_resps"]
    while isinstance(resp, list):
        resp = resp[0]
    return resp


def test_video_benchmarks_through_their_own_utils(lmms_run):
    results, samples, _ = lmms_run
    vm = [s["videomme_perception_score"] for s in samples["fixture_videomme"]]
    assert len(vm) == 3 and [v["answer"] for v in vm] == ["A", "C", "D"]
    want = 100 * sum(v["pred_answer"] == v["answer"] for v in vm) / len(vm)
    assert _score(results, "fixture_videomme", "videomme_perception_score") == pytest.approx(want)
    mv = [s["mvbench_accuracy"] for s in samples["fixture_mvbench"]]
    assert [v["gt_answer"] for v in mv] == ["B", "A"]
    answered = [v for v in mv if v["pred_answer"] != ""]
    want = 100 * sum(v["score"] for v in answered) / len(answered) if answered else 0
    assert _score(results, "fixture_mvbench", "mvbench_accuracy") == pytest.approx(want)
    ml = [s["mlvu_percetion_score"] for s in samples["fixture_mlvu"]]
    types = ["anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning"]
    per_type = []
    for t in types:  # MLVU dev averages over its seven types, 0 for a type with no question
        got = [v["pred_answer"] == v["answer"] for v in ml if v["task_type"] == t]
        per_type.append(100 * sum(got) / len(got) if got else 0)
    assert _score(results, "fixture_mlvu", "mlvu_percetion_score") == pytest.approx(
        sum(per_type) / len(types)
    )
    lv = [s["lvb_acc"] for s in samples["fixture_lvb"]]
    assert [v["answer"] for v in lv] == ["A", "C"]
    want = round(sum(v["parsed_pred"] == v["answer"] for v in lv) / len(lv), 5)
    assert _score(results, "fixture_lvb", "lvb_acc") == pytest.approx(want)
    # Sampled answers: text of the demo vocabulary (each batch reuses the seed, so
    # rows at the same place in two batches repeat).
    answers = [_answer(s) for task in samples for s in samples[task]]
    assert all(isinstance(a, str) for a in answers) and len(set(answers)) >= 4


def test_tempura_tasks_score_like_launch_eval(lmms_run, demo_data):
    results, samples, _ = lmms_run
    # Charades-STA: first and any window, from the logged answers.
    queries = charades.read_annotations(demo_data["charades"])
    rows = samples["tempura_charades_sta"]
    assert len(rows) == LIMIT
    preds = [parse_windows(_answer(s)) for s in rows]
    gts = [(queries[int(s["doc"]["id"])].start, queries[int(s["doc"]["id"])].end) for s in rows]
    for protocol in ("first", "any"):
        want = charades.metrics(preds, gts, protocol)
        for key in ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7"):
            got = _score(results, "tempura_charades_sta", f"{key}_{protocol}")
            assert got == pytest.approx(want[key]), (key, protocol)
    # QVHighlights: official metrics of submission rows built from the answers.
    gt = {
        str(g["qid"]): g for g in qvhighlights.read_jsonl(demo_data["qvhighlights"], "ground_truth")
    }
    rows = samples["tempura_qvhighlights"]
    sub = [
        qvhighlights.submission_record(
            gt[s["doc"]["id"]]["qid"],
            float(gt[s["doc"]["id"]]["duration"]),
            highlights=parse_highlights(_answer(s)),
        )
        for s in rows
    ]
    want = qvhighlights.evaluate(sub, [gt[s["doc"]["id"]] for s in rows])
    for key in ("HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "MR-full-mAP", "MR-full-R1@0.5"):
        assert _score(results, "tempura_qvhighlights", key) == pytest.approx(want[key]), key
    # Dense captioning: localisation against the VER records' reference events.
    rows = samples["tempura_dvc"]
    truth = {c.id: c for c in bench("dvc").cases(Path(demo_data["stage2"]), Path(), "")}
    assert {s["doc"]["id"] for s in rows} <= set(truth)
    scored = bench("dvc").score(
        [{"id": s["doc"]["id"], "answer": _answer(s)} for s in rows],
        Path(demo_data["stage2"]),
        Path(demo_data["media_root"]),
        {"partial": True, "captions": False},
    )
    for key in ("F1", "Recall", "Precision", "events_per_video"):
        assert _score(results, "tempura_dvc", key) == pytest.approx(scored[key]), key
    cider = _score(results, "tempura_dvc", "CIDEr")
    assert math.isnan(cider) or cider >= 0


def test_loglikelihood_matches_the_first_decode_step(lmms_run, demo_data):
    """log p(continuation) from one forward equals generate's first-step logits
    (the jitted prefill), and is greedy exactly for the token generate picks."""
    import dataclasses

    import numpy as np
    from lmms_eval.api.instance import Instance

    from tempura_jax.data.batching import collate, model_inputs
    from tempura_jax.inference.generate import generate
    from tempura_jax.inference.infer import Case, left_pad
    from tempura_jax.lmms.model import TempuraJax

    _, _, tasks_dir = lmms_run
    lm = TempuraJax(checkpoint=str(tasks_dir.parent / "ckpt"), max_pixels=6272, device="cpu")
    video = str(sorted((Path(demo_data["media_root"]) / "videos").glob("*.mp4"))[0])
    lm.task_dict = {"t": {"test": [{"video": video}]}}
    ctx = "Which shape moves first?"

    def request(continuation):
        args = (ctx, continuation, lambda doc: [doc["video"]], 0, "t", "test")
        return Instance("loglikelihood", args, 0, {"task": "t", "doc_id": 0, "repeats": 1})

    p = lm.predictor
    ex = p.example(Case(video=video, task="free", query=ctx))
    batch = collate([ex], p.data, p.model.config, p.tok.pad_id)
    inputs = dataclasses.replace(model_inputs(left_pad(batch)), right_padded=False)
    sampling = dataclasses.replace(p.sampling, max_new_tokens=1, suppress_ids=())
    first = np.asarray(generate(p.model, inputs, sampling, return_logits=True).logits[0, 0])
    logp = first - first.max() - np.log(np.exp(first - first.max()).sum())
    best = int(first.argmax())
    # a lower-ranked token whose text encodes back to it alone
    other = next(
        int(t) for t in np.argsort(first)[-2::-1] if p.tok.encode(p.tok.decode([int(t)])) == [t]
    )
    texts = [p.tok.decode([t]) for t in (best, other)]
    assert [p.tok.encode(t) for t in texts] == [[best], [other]]  # one token each
    got = lm.loglikelihood([request(t) for t in texts])
    assert got[0][0] == pytest.approx(logp[best], abs=1e-3) and got[0][1] is True
    assert got[1][0] == pytest.approx(logp[other], abs=1e-3) and got[1][1] is False
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])
    with pytest.raises(ValueError, match="unknown model_args \\['fsp'\\]"):
        TempuraJax(checkpoint=str(tasks_dir.parent / "ckpt"), fsp=2)
