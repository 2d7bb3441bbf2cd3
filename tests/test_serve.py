"""tempura-serve as a real HTTP server on 127.0.0.1 (a subprocess on a free
port), driven with the `openai` client: shapes, streaming, batching of
concurrent requests (greedy answers equal single runs), limits and bad media."""

import base64
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import start_http_module

openai = pytest.importorskip("openai")

MAX_FRAMES = 15
MAX_TOKENS = 24


def start_server(args: list[str], timeout: float = 240) -> tuple[subprocess.Popen, int]:
    """Start `python -m tempura_jax.inference.serve ARGS --port 0`; (process, port)."""
    proc, line = start_http_module("tempura_jax.inference.serve", [*args, "--port", "0"], timeout)
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def server(demo_data, tmp_path_factory):
    from converters.convert import to_orbax
    from tempura_jax.config import tiny
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    folder = tmp_path_factory.mktemp("serve")
    write_random_hf_checkpoint(tiny(tie_word_embeddings=False), folder / "hf", dtype="float32")
    ckpt = folder / "tiny"
    to_orbax(folder / "hf", ckpt)  # a tempura-jax checkpoint, as tempura-convert writes
    proc, port = start_server([
        "--checkpoint", str(ckpt), "--tokenizer", demo_data["tokenizer"],
        "--media-root", demo_data["media_root"], "--model-name", "tiny",
        "--batch-size", "4", "--batch-wait-ms", "800", "--max-frames", str(MAX_FRAMES),
        "--max-tokens", str(MAX_TOKENS), "--stream-chunk", "4", "--max-request-bytes", str(1 << 20),
        "pixels.min_pixels=6272", "pixels.max_pixels=6272", "max_seq_len=1024",
    ])  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    yield client, f"http://127.0.0.1:{port}", Path(demo_data["media_root"])
    proc.terminate()
    proc.wait(30)


def video(path: str, text: str = "") -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": path}}, {"type": "text", "text": text},
    ]}]  # fmt: skip


def ask(client, messages, **kw):
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(model="tiny", messages=messages, **kw)


SHORT = "videos/demo_000.mp4"  # 13.9 s: 14 frames at 1 FPS
REQUESTS = [
    dict(messages=video(SHORT), extra_body={"task": "dense"}),
    dict(messages=video(SHORT, "a red circle"), extra_body={"task": "grounding"}),
    dict(messages=video(SHORT), extra_body={"task": "masked", "mask": [3, 6]}),
    dict(messages=video(SHORT, "What moves first?")),
]


def test_models_health_and_a_completion(server):
    client, url, _ = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    r = ask(client, **REQUESTS[0])
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    extra = r.model_extra["tempura"]
    assert extra["task"] == "dense" and "events" in extra
    assert extra["frame_times"] == [float(i) for i in range(14)]
    assert 0 < len(extra["token_ids"]) <= 8
    assert r.usage.prompt_tokens > 14 and r.usage.completion_tokens >= len(extra["token_ids"])


def test_streaming_equals_non_streaming(server):
    client, _, _ = server
    whole = ask(client, **REQUESTS[3])
    chunks = list(ask(client, **REQUESTS[3], stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert finish[0].model_extra["tempura"] == {**whole.model_extra["tempura"]}
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def streamed(client, request: dict, **kw) -> tuple[list[str], str, object]:
    """(the content deltas before the finish chunk, the finish reason, that chunk)."""
    deltas, finish = [], None
    for c in ask(client, **request, stream=True, **kw):
        choice = c.choices[0]
        if choice.finish_reason:
            finish = c
            break
        if choice.delta.content:
            deltas.append(choice.delta.content)
    return deltas, finish.choices[0].finish_reason, finish


def test_streaming_sends_text_while_decoding(server):
    """max_tokens 24 in decode chunks of 4: the text comes in several deltas
    (after the prefill and after each chunk), which join to the answer."""
    client, _, _ = server
    whole = ask(client, **REQUESTS[0], max_tokens=MAX_TOKENS)
    text = whole.choices[0].message.content
    assert len(whole.model_extra["tempura"]["token_ids"]) > 12 and len(text) > 12
    deltas, finish, _ = streamed(client, REQUESTS[0], max_tokens=MAX_TOKENS)
    assert len(deltas) > 2 and "".join(deltas) == text
    assert finish == whole.choices[0].finish_reason


def test_stop_strings_cut_the_answer_and_end_its_decoding(server):
    client, _, _ = server
    whole = ask(client, **REQUESTS[0], max_tokens=MAX_TOKENS)
    text, ids = whole.choices[0].message.content, whole.model_extra["tempura"]["token_ids"]
    i = next(
        k for k in range(len(text) // 4, len(text)) if text[k : k + 3].strip() == text[k : k + 3]
    )
    stop = text[i : i + 3]  # no space at either end, from the first quarter on
    expected = text[: text.find(stop)]
    r = ask(client, **REQUESTS[0], max_tokens=MAX_TOKENS, stop=["never-in-it", stop])
    assert r.choices[0].message.content == expected and stop not in expected
    assert r.choices[0].finish_reason == "stop"
    # It left its batch at the chunk where the stop string appeared.
    assert len(r.model_extra["tempura"]["token_ids"]) < len(ids)
    deltas, finish, last = streamed(client, REQUESTS[0], max_tokens=MAX_TOKENS, stop=stop)
    assert "".join(deltas) == expected and finish == "stop"
    assert last.model_extra["tempura"]["token_ids"] == r.model_extra["tempura"]["token_ids"]


def test_concurrent_requests_are_batched_and_equal_single_runs(server):
    client, _, _ = server
    single = [ask(client, **r) for r in REQUESTS]
    assert all(s.model_extra["tempura"]["batch_size"] == 1 for s in single)
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda r: ask(client, **r), REQUESTS))
    assert max(t.model_extra["tempura"]["batch_size"] for t in together) > 1
    for s, t in zip(single, together, strict=True):
        assert t.model_extra["tempura"]["token_ids"] == s.model_extra["tempura"]["token_ids"]
        assert t.choices[0].message.content == s.choices[0].message.content


def test_image_frames_as_data_urls(server):
    client, _, root = server
    frames = [root / "frames" / next(iter(os.listdir(root / "frames"))) / f"{i}.jpg"
              for i in range(3)]  # fmt: skip
    parts = [{"type": "image_url", "image_url": {
        "url": "data:image/jpeg;base64," + base64.b64encode(f.read_bytes()).decode()}}
        for f in frames]  # fmt: skip
    r = ask(client, [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe."}]}])
    assert r.model_extra["tempura"]["frame_times"] == [0.0, 1.0, 2.0]


def bad(client, messages, **kw) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages, **kw)
    return e.value.response.json()["error"]["message"]


def test_bad_requests_get_a_400_with_the_reason(server, tmp_path):
    client, url, root = server
    assert "media not found: videos/nope.mp4" in bad(client, video("videos/nope.mp4"))
    assert "outside the media root" in bad(client, video("../../etc/hostname"))
    assert "outside the media root" in bad(client, video("file:///etc/hostname"))
    assert "garbage base64" in bad(client, video("data:video/mp4;base64,@@not base64@@"))
    junk = "data:video/mp4;base64," + base64.b64encode(b"\x00junk" * 50).decode()
    assert "bad media" in bad(client, video(junk))
    long = "videos/demo_001.mp4"  # 16 s: 16 frames
    assert f"16 frames, over the limit max_frames={MAX_FRAMES}" in bad(client, video(long))
    assert "remote media is off" in bad(client, video("http://127.0.0.1:9/v.mp4"))
    too_many = MAX_TOKENS + 1
    assert f"over the limit max_tokens={MAX_TOKENS}" in bad(
        client, video(SHORT), max_tokens=too_many
    )
    huge = "data:video/mp4;base64," + "A" * (1 << 20)
    assert "over the limit max_request_bytes" in bad(client, video(huge))
    assert "needs a masked window" in bad(client, video(SHORT), extra_body={"task": "masked"})
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    # The server still answers.
    assert ask(client, **REQUESTS[0]).model_extra["tempura"]["task"] == "dense"
