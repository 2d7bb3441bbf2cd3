"""The VER annotation pipeline end to end: demo videos, a local
OpenAI-compatible server (tests/openai_fake.py) spoken to by the real
`openai` client, faults on a schedule, caching, resume after SIGKILL,
shards, a dead server, and the outputs checked and trained on."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from openai_fake import FakeServer
from test_train import tiny_init  # noqa: F401 - the tiny random checkpoint fixture

from tempura_jax.annotate import answers, cli
from tempura_jax.annotate.repair import InvalidEvents, repair_events
from tempura_jax.annotate.run import list_videos, take_shard
from tempura_jax.annotate.store import content_hash, write_atomic
from tempura_jax.data.events import PROMPTS, parse_events
from tempura_jax.data.video_io import write_video

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--timeout", "1.0", "--retries", "2", "--backoff", "0.01", "--no-progress"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six demo videos with exact events, a static one and an unreadable file."""
    from tempura_jax.data.demo import DemoSpec, make_demo_data

    demo = make_demo_data(
        tmp_path_factory.mktemp("demo"),
        DemoSpec(num_videos=6, min_seconds=10, max_seconds=14, frame_folders=0),
    )
    root = tmp_path_factory.mktemp("videos")
    for src in sorted(Path(demo["media_root"], "videos").glob("*.mp4")):
        shutil.copy(src, root / src.name)
    still = np.full((180, 320, 3), 90, np.uint8)
    still[60:120, 100:200] = (200, 40, 40)
    write_video(root / "static.mp4", [still] * 96, fps=8.0)
    (root / "sub").mkdir()
    (root / "sub" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    known = {}
    for rec in json.loads(Path(demo["stage2"]).read_text()):
        path = root / Path(rec["video"]).name
        events = [
            (e.start, e.end, e.caption) for e in parse_events(rec["conversations"][1]["value"])
        ]
        known[content_hash(path)] = {"name": rec["id"], "duration": events[-1][1], "events": events}
    known[content_hash(root / "static.mp4")] = {"name": "static", "duration": 12.0, "events": []}
    meta = root.parent / f"{root.name}_meta.jsonl"
    meta.write_text(json.dumps({"video": "demo_005", "title": "Shapes", "description": "x"}) + "\n")
    return {"root": root, "known": known, "tokenizer": demo["tokenizer"], "meta": meta}


FAULTS = {
    ("demo_002", "segments"): ["bad_overlap"] * 3,  # never valid: invalid_events
    ("demo_003", "category"): ["429"],
    ("demo_003", "segments"): ["malformed"],
    ("demo_004", "segments"): ["overlap"],  # repaired, not re-asked
    ("demo_005", "segments"): ["out_of_range"],  # clipped, not re-asked
    ("demo_004", "descriptions"): ["slow"],  # a client timeout, then retried
    ("demo_005", "coherence"): ["500"],
}


@pytest.fixture(scope="module")
def server(videos):
    s = FakeServer(
        videos["known"], FAULTS, talking={"demo_000"}, incoherent={"demo_001"}, slow_s=1.4
    ).start()
    yield s
    s.stop()


def args_for(videos, out, url, *extra):
    return [
        "--metadata",
        videos["meta"],
        "--videos",
        videos["root"],
        "--out",
        out,
        "--base-url",
        url,
        "--model",
        "fake-4o",
        "--concurrency",
        "3",
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def full_run(videos, server, tmp_path_factory):
    out = tmp_path_factory.mktemp("ver")
    assert cli.main([str(a) for a in args_for(videos, out, server.url)]) == 0
    return out, len(server.log)


def test_end_to_end_outputs_and_drops(videos, server, full_run):
    out, n_requests = full_run
    summary = json.loads((out / "summary.json").read_text())
    v = summary["videos"]
    assert v["seen"] == 8 and v["kept"] == 4
    assert v["dropped"] == {
        "static": 1,
        "talking": 1,
        "unreadable": 1,
        "invalid_events": 1,
        "incoherent": 0,
        "api_error": 0,
    }
    assert v["masked_records"] == 3 and v["no_masked_record"] == {"incoherent": 1}
    reasons = {d["video"]: d["reason"] for d in summary["dropped_videos"]}
    assert reasons == {
        "static.mp4": "static",
        "sub/broken.mp4": "unreadable",
        "demo_000.mp4": "talking",
        "demo_002.mp4": "invalid_events",
    }
    # Every request named its stage in response_format; the faults were all hit.
    assert server.count(stage="?") == 0
    assert all(server.count(name=n, stage=s) >= len(f) for (n, s), f in FAULTS.items())
    assert server.count(name="demo_002", stage="segments") == 3  # 1 + answer_retries
    assert server.count(name="static") == 0  # dropped before any request
    assert summary["requests"]["segments"] == server.count(stage="segments")
    assert sum(summary["requests"].values()) == n_requests
    assert summary["tokens"]["segments"]["prompt"] > 0 and summary["cost_usd"] > 0
    fails = summary["failures"]  # what the client retried, by kind
    assert fails["RateLimitError"] == fails["APITimeoutError"] == fails["InternalServerError"] == 1
    assert fails["invalid_segments"] == 4  # demo_002 three times, demo_003's malformed JSON
    # Grids: a 10-14 s video at 1 FPS is one 4x4 image; the category stage sends one,
    # but none for the video with --metadata (its title and description instead).
    assert {e["images"] for e in server.log if e["stage"] == "segments"} == {1}
    cat = {e["name"]: e["images"] for e in server.log if e["stage"] == "category"}
    assert cat.pop("demo_005") == 0 and set(cat.values()) == {1}
    dense = json.loads((out / "stage2_dense.json").read_text())
    masked = json.loads((out / "stage1_masked.json").read_text())
    assert [r["video"] for r in dense] == [
        "demo_001.mp4",
        "demo_003.mp4",
        "demo_004.mp4",
        "demo_005.mp4",
    ]
    by_name = {k["name"]: k for k in videos["known"].values()}
    for rec in dense:
        assert rec["conversations"][0]["value"] == "<video>\n" + PROMPTS["reference"]["dense"]
        got = [(e.start, e.end, e.caption) for e in parse_events(rec["conversations"][1]["value"])]
        want = by_name[rec["id"]]["events"]
        # The same events; boundaries exact but for the last end, snapped to the file's
        # length (frames at 8 fps), and those of the repaired answers (within 0.3 s).
        assert [c for *_, c in got] == [c for *_, c in want]
        atol = 0.31 if rec["id"] in ("demo_004", "demo_005") else 0.13
        assert np.allclose([g[:2] for g in got], [w[:2] for w in want], atol=atol)
        if atol < 0.3:
            assert [g[:2] for g in got][:-1] == [w[:2] for w in want][:-1]
    for rec in masked:
        human, gpt = (t["value"] for t in rec["conversations"])
        ((first, last),) = rec["masked_start_end_frame_idxs"]
        assert human.startswith("<video>\nGiven the input video with the masked segment from ")
        assert gpt.startswith("<think>The shape seen before") and "</think><answer>So the" in gpt
        assert 0 <= first <= last


def test_outputs_pass_check_data(videos, full_run):
    sys.path.insert(0, str(ROOT / "launch"))
    import check_data

    out, _ = full_run
    for name in ("stage2_dense.json", "stage1_masked.json"):
        code = check_data.main(
            [
                "--data",
                str(out / name),
                "--media-root",
                str(videos["root"]),
                "--tokenizer",
                videos["tokenizer"],
                "--max-seq-len",
                "1024",
                "--min-pixels",
                str(112 * 56),
                "--max-pixels",
                str(112 * 56),
            ]
        )
        assert code == 0, name


def test_second_run_sends_nothing(videos, server, full_run, tmp_path):
    out, _ = full_run
    before = len(server.log)
    files = {n: (out / n).read_text() for n in ("stage2_dense.json", "stage1_masked.json")}
    assert cli.main([str(a) for a in args_for(videos, out, server.url)]) == 0
    assert len(server.log) == before
    assert {n: (out / n).read_text() for n in files} == files
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["requests"].values()) == 0 and summary["cached"]["segments"] == 5
    # Another policy for incoherent videos needs no request either.
    extra = ("--incoherent", "video", "--cache", out / "cache")
    assert (
        cli.main([str(a) for a in args_for(videos, tmp_path / "strict", server.url, *extra)]) == 0
    )
    assert len(server.log) == before
    strict = json.loads((tmp_path / "strict" / "summary.json").read_text())["videos"]
    assert strict["dropped"]["incoherent"] == 1 and strict["kept"] == 3
    # A dry run against the filled cache expects nothing; against an empty one, 5 per video.
    assert cli.main([str(a) for a in args_for(videos, out, server.url, "--dry-run")]) == 0
    code = cli.main([str(a) for a in args_for(videos, tmp_path / "fresh", server.url, "--dry-run")])
    assert code == 0 and len(server.log) == before
    assert not (tmp_path / "fresh" / "stage2_dense.json").exists()


def test_dry_run_counts(videos, server, tmp_path, capsys):
    before = len(server.log)
    assert cli.main([str(a) for a in args_for(videos, tmp_path, server.url, "--dry-run")]) == 0
    brief = json.loads(capsys.readouterr().out)
    assert len(server.log) == before
    # 7 readable videos (static not decoded in a dry run: an upper bound), 5 stages each.
    assert brief["requests"] == {s: 7 for s in answers.STAGES}
    assert brief["tokens"]["segments"]["prompt"] > 7 * 1000  # one 4x4 grid image each


def test_shards_then_merge_equal_one_run(videos, server, full_run, tmp_path):
    out, _ = full_run
    before = len(server.log)
    for i in range(2):
        extra = ("--shard", f"{i}/2", "--cache", out / "cache")
        assert cli.main([str(a) for a in args_for(videos, tmp_path, server.url, *extra)]) == 0
    assert len(server.log) == before  # the shared cache answers everything
    assert cli.main(["--out", str(tmp_path), "--merge"]) == 0
    for name in ("stage2_dense.json", "stage1_masked.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((out / name).read_text())
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged["videos"]["dropped"]["static"] == 1 and merged["videos"]["seen"] == 8


def test_killed_run_resumes_without_repeating_done_work(videos, tmp_path):
    server = FakeServer(videos["known"]).start()
    try:
        out = tmp_path / "ver"
        cmd = [
            sys.executable,
            str(ROOT / "launch" / "annotate.py"),
            *map(str, args_for(videos, out, server.url)),
            "--concurrency",
            "1",
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        deadline = time.monotonic() + 120
        while server.count() < 7 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        assert not (out / "summary.json").exists()
        done = set()
        for entry in (out / "cache").rglob("*.json"):
            key = json.loads(entry.read_text())["key"]
            done.add(
                (videos["known"].get(key["video"], {}).get("name"), key["stage"].split("-")[0])
            )
        done = {d for d in done if d[1] in answers.STAGES}
        assert len(done) >= 5
        first = len(server.log)
        assert cli.main([str(a) for a in args_for(videos, out, server.url)]) == 0
        asked = {(e["name"], e["stage"]) for e in server.log[first:]}
        assert asked and not asked & done
        assert first + len(server.log[first:]) == len(server.log)
        v = json.loads((out / "summary.json").read_text())["videos"]
        assert v["kept"] == 6 and v["masked_records"] == 6
    finally:
        server.stop()


def test_server_down_is_a_clear_error_and_writes_nothing(videos, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ver"
    code = cli.main([str(a) for a in args_for(videos, out, f"http://127.0.0.1:{port}/v1")])
    err = capsys.readouterr().err
    assert code == 3 and "cannot reach" in err and "after 3 attempts" in err
    assert not any(
        (out / n).exists() for n in ("stage2_dense.json", "stage1_masked.json", "summary.json")
    )


def test_repair_and_lenient_answers(tmp_path):
    assert repair_events([[0.4, 5.2], [4.8, 9.0], [9.4, 12.9]], 12.0) == [
        [0.0, 5.0],
        [5.0, 9.2],
        [9.2, 12.0],
    ]
    assert repair_events([[0, 6], [6, 12], [13, 15]], 12.0) == [[0.0, 6.0], [6.0, 12.0]]
    with pytest.raises(InvalidEvents, match="before event 0 ends"):
        repair_events([[0, 6], [3, 12]], 12.0)
    with pytest.raises(InvalidEvents, match="gap"):
        repair_events([[0, 4], [7, 12]], 12.0)
    text = 'Sure! ```json\n{"reasoning": "r", "coherent": "true"}\n```'
    assert answers.parse("coherence", text) == {"reasoning": "r", "coherent": True}
    assert answers.parse("category", '{"category": "news", "talking": false}')["category"] == "News"
    with pytest.raises(answers.InvalidAnswer, match="'talking'"):
        answers.parse("category", '{"category": "News"}')
    with pytest.raises(answers.InvalidAnswer, match="not one of the 10"):
        answers.parse("category", '{"category": "Cats", "talking": false}')
    write_atomic(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_outputs_train_stage_1_then_stage_2(videos, full_run, request, tmp_path):
    """Two steps of each stage on the annotated records (the tiny model)."""
    random_init = request.getfixturevalue("tiny_init")  # tests/test_train.py's fixture
    import jax

    import configs
    from tempura_jax import overrides
    from tempura_jax.train.trainer import Trainer

    out, _ = full_run
    common = [
        f"data.media_root={videos['root']}",
        f"data.tokenizer={videos['tokenizer']}",
        "data.read_threads=1", "tensorboard=false", "progress=false", "max_steps=2",
        "batch.global_size=2", "batch.per_device=2",
        "data.seq_bucket_min=1024",  # one padded length for every batch: one compilation
    ]  # fmt: skip
    losses = {}
    for stage, data, init in (
        (1, "stage1_masked.json", random_init),
        (2, "stage2_dense.json", tmp_path / "s1" / "checkpoints"),
    ):
        extra = [
            f"data.data={out / data}",
            f"model.init={init}",
            f"workdir={tmp_path / f's{stage}'}",
        ]
        cfg = overrides.apply(configs.get("demo").get_config(stage), [*common, *extra])
        losses[stage] = Trainer(cfg, devices=jax.devices()[:1]).run().losses
    assert all(len(v) == 2 and all(np.isfinite(v)) for v in losses.values()), losses


def test_video_lists_metadata_and_shards(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "b.mkv", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    root, found = list_videos(tmp_path)
    assert root == tmp_path and [v.rel for v in found] == ["a/x.mp4", "b.mkv"]
    (tmp_path / "list.txt").write_text("# one per line\nb.mkv\n\na/x.mp4\n/abs/y.mp4\n")
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps({"video": "x", "title": "t"}) + "\n")
    root, listed = list_videos(tmp_path / "list.txt", meta)
    assert [v.rel for v in listed] == ["/abs/y.mp4", "a/x.mp4", "b.mkv"]
    assert listed[1].metadata == {"video": "x", "title": "t"} and listed[2].metadata is None
    shards = [take_shard(listed, i, 2) for i in range(2)]
    assert sorted(v.rel for s in shards for v in s) == sorted(v.rel for v in listed)
    meta.write_text("{bad\n")
    with pytest.raises(ValueError, match="m.jsonl: line 1"):
        list_videos(tmp_path, meta)
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        list_videos(tmp_path / "nothing")


def test_cli_options_and_bad_arguments(capsys):
    text = cli.parser().format_help()
    for flag in (
        "--videos",
        "--out",
        "--base-url",
        "--model",
        "--api-key-env",
        "--metadata",
        "--concurrency",
        "--shard",
        "--dry-run",
        "--merge",
        "--grid",
        "--frame-width",
    ):
        assert flag in text
    with pytest.raises(SystemExit):
        cli.main(["--videos", "v", "--out", "o", "--shard", "2/2"])
    assert "--shard 2/2: need N >= 1 and 0 <= I < N" in capsys.readouterr().err
    assert cli.main(["--videos", "/nonexistent/v", "--out", "/tmp/never"]) == 2
    assert "no such folder or list file" in capsys.readouterr().err
