"""Inference on videos: cases, prompts, left-padded batches, and the Predictor
on a tiny random model over the demo videos."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_data_config
from flax import nnx

from tempura_jax import overrides, reference_prompts
from tempura_jax.config import tiny
from tempura_jax.data.config import DataConfig
from tempura_jax.data.tokenizer import Tokenizer
from tempura_jax.inference import tasks
from tempura_jax.inference.generate import SamplingConfig
from tempura_jax.inference.infer import Case, Predictor, checkpoint_setup, left_pad, read_cases
from tempura_jax.model.qwen2_5_vl import Qwen2_5_VL


@pytest.fixture(scope="module")
def predictor(demo_data):
    model = Qwen2_5_VL(tiny().replace(compute_dtype="float32"), rngs=nnx.Rngs(0))
    cfg = demo_data_config(demo_data)
    sampling = SamplingConfig(max_new_tokens=6)
    return Predictor(model, Tokenizer(cfg.tokenizer), cfg, sampling, batch_size=2)


def _video(demo_data, i: int) -> str:
    return str(Path(demo_data["media_root"]) / "videos" / f"demo_{i:03d}.mp4")


def test_case_errors_name_the_place(tmp_path):
    with pytest.raises(ValueError, match=r"f#0: field 'video'"):
        Case.from_json({"query": "x"}, "f#0")
    with pytest.raises(ValueError, match=r"f#1: field 'mask'"):
        Case.from_json({"video": "v.mp4", "task": "masked", "mask": [5, 2]}, "f#1")
    with pytest.raises(ValueError, match=r"f#2: .*needs a masked window"):
        Case.from_json({"video": "v.mp4", "task": "masked"}, "f#2")
    with pytest.raises(ValueError, match=r"f#3: unknown fields \['qury'\]"):
        Case.from_json({"video": "v.mp4", "qury": "x"}, "f#3")
    with pytest.raises(ValueError, match="unknown task"):
        Case.from_json({"video": "v.mp4", "task": "caption"}, "f#4")
    # Defaults: a query alone is a free prompt, nothing is a dense caption.
    assert Case.from_json({"video": "v", "query": "q"}, "x").task == "free"
    assert Case.from_json({"video": "v"}, "x").task == "dense"


def test_read_cases_resolves_videos_and_ids(tmp_path):
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"video": "a.mp4"}, {"video": "/abs/b.mp4", "id": "b"}]))
    cases = read_cases(path)
    assert [c.video for c in cases] == [str(tmp_path / "a.mp4"), "/abs/b.mp4"]
    assert [c.id for c in cases] == ["0", "b"]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cases.json: unreadable"):
        read_cases(path)


def test_task_prompts_and_parsers():
    # The reference's wording by default (byte for byte), the project's as a variant.
    mep = reference_prompts.MEP.replace("<start>", "3.1").replace("<end>", "5.3")
    assert tasks.get("masked").text(mask=(3.1, 5.3)) == mep
    assert tasks.get("dense").text() == reference_prompts.DVC
    assert "3.1 to 5.3 seconds is masked" in tasks.get("masked_project").text(mask=(3.1, 5.3))
    assert tasks.get("dense_project").text().startswith("Segment the video")
    assert '"a man sits"' in tasks.get("grounding").text("a man sits")
    parsed = tasks.get("masked").parse(
        "<think>x</think><answer>So the description of the predicted event from 3.1 to 5.3 "
        "is: A dog runs.</answer>"
    )
    assert parsed["windows"] == [[3.1, 5.3]] and parsed["prediction"].endswith("A dog runs.")
    dense = tasks.get("dense").parse("From 0.0 to 2.5 seconds, a.\n\nFrom 2.5 to 4 seconds, b.")
    assert dense["events"] == [[0.0, 2.5, "a."], [2.5, 4.0, "b."]]


def test_left_pad_moves_padding_to_the_front():
    batch = {
        "input_ids": np.array([[5, 6, 7, 0], [8, 9, 0, 0]]),
        "segment_ids": np.array([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": np.full((2, 4), -100),
        "position_ids": np.array([[[0, 1, 2, 1], [0, 1, 1, 1]]] * 3),
    }
    out = left_pad(batch)
    assert out["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 8, 9]]
    assert out["segment_ids"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert out["position_ids"][0].tolist() == [[1, 0, 1, 2], [1, 1, 0, 1]]


def test_data_config_round_trips_through_json():
    cfg = DataConfig(data=("a.json",), max_seq_len=2048).replace(visual_mode="video")
    cfg = overrides.apply(cfg, ["sampling.fps=2", "stamp.enabled=false", "pixels.max_pixels=99999"])
    back = overrides.from_dict(DataConfig, json.loads(json.dumps(overrides.to_dict(cfg))))
    assert back == cfg
    # A key an older or newer version wrote is ignored, not fatal.
    assert overrides.from_dict(DataConfig, {"gone": 1, "max_seq_len": 64}).max_seq_len == 64


def test_checkpoint_setup_of_an_hf_directory(hf_model_dir):
    data, tok = checkpoint_setup(hf_model_dir("tied")[1])
    assert data == DataConfig() and tok is None  # TEMPURA defaults, no tokenizer files


def test_prompt_ends_at_the_assistant_turn(predictor, demo_data):
    ex = predictor.example(Case(video=_video(demo_data, 0), task="dense"))
    tail = [predictor.tok.im_start_id, *predictor.tok.encode("assistant\n")]
    assert ex.input_ids[-len(tail) :].tolist() == tail
    assert (ex.labels == -100).all()


def test_masked_case_blanks_its_window(predictor, demo_data):
    video = _video(demo_data, 1)
    plain = predictor.example(Case(video=video, task="dense"))
    masked = predictor.example(Case(video=video, task="masked", mask=(3.0, 5.0)))
    per_frame = plain.pixel_values.reshape(len(plain.times), -1)
    blanked = masked.pixel_values.reshape(len(masked.times), -1)
    differs = np.abs(per_frame - blanked).max(axis=1) > 0
    assert differs.tolist() == [3.0 <= t < 5.0 for t in plain.times]


def test_batched_run_equals_one_by_one_and_bad_media_is_reported(predictor, demo_data, tmp_path):
    cases = [
        Case(video=_video(demo_data, 0), task="dense", id="a"),
        Case(video=str(tmp_path / "missing.mp4"), task="dense", id="bad"),
        Case(video=_video(demo_data, 1), task="grounding", query="a circle moves", id="b"),
        Case(video=_video(demo_data, 2), task="masked", mask=(2.0, 4.0), id="c"),
    ]
    seen = []
    batched = list(predictor.run(cases, progress=seen.append))
    assert [p.id for p in batched] == ["a", "bad", "b", "c"]
    assert seen == [2, 2]
    bad = batched[1]
    assert bad.answer is None and "bad_media" in bad.error
    single = Predictor(
        predictor.model, predictor.tok, predictor.data, predictor.sampling, batch_size=1
    )
    for p in batched:
        if p.error:
            continue
        case = next(c for c in cases if c.id == p.id)
        (alone,) = single.run([case])
        assert alone.answer == p.answer
        assert set(p.parsed) == set(tasks.get(case.task).parse("").keys())
