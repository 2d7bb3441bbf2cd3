"""tempura-serve's request checks and media policy, without a model; and every
console script resolving to its entry point."""

import base64
import importlib
import runpy
import tomllib
from pathlib import Path

import pytest

from tempura_jax.inference.batcher import decode_bucket, row_bucket
from tempura_jax.inference.chat_request import parse
from tempura_jax.inference.media_input import MediaPolicy, RequestError, fetch_images, fetch_video

REPO = Path(__file__).resolve().parents[1]


def body(*parts, **kw):
    return {"messages": [{"role": "user", "content": list(parts)}], **kw}


VIDEO = {"type": "video_url", "video_url": {"url": "v.mp4"}}
TEXT = {"type": "text", "text": "what happens?"}


def test_parse_reads_the_openai_fields():
    req = parse(body(VIDEO, TEXT, max_tokens=9, temperature=0.5, top_p=0.9, seed=3, stop="."))
    assert req.turns == (("user", "<video>\nwhat happens?"),) and req.kind == "video"
    assert (req.max_tokens, req.temperature, req.top_p, req.seed) == (9, 0.5, 0.9, 3)
    assert req.stop == (".",) and req.task == "free" and req.query == "what happens?"
    sys_msg = {"role": "system", "content": "Be brief."}
    req = parse({"messages": [sys_msg, *body(VIDEO)["messages"]], "task": "masked",
                 "mask": [2, 5]})  # fmt: skip
    assert req.system == "Be brief." and req.task == "masked" and req.mask == (2.0, 5.0)


@pytest.mark.parametrize(
    "raw, message",
    [
        (body(TEXT), "needs a video_url part or image_url parts"),
        (body(VIDEO, VIDEO), "one video_url"),
        (body(VIDEO, {"type": "image_url", "image_url": {"url": "a.png"}}), "not both"),
        (body(VIDEO, {"type": "audio"}), "unsupported part type 'audio'"),
        (body(VIDEO, task="masked"), "needs a masked window"),
        (body(VIDEO, task="grounding"), "needs a query"),
        (body(VIDEO, task="caption"), "unknown task 'caption'"),
        (body(VIDEO, mask=[5, 2]), "0 <= start < end"),
        (body(VIDEO, temperature=3), "'temperature' must be in [0.0, 2.0]"),
        (body(VIDEO, max_tokens=0), "'max_tokens' must be in [1, None]"),
        (body(VIDEO, n=2), "only n=1"),
        (body(VIDEO, stop=[""]), "field 'stop'"),
        ({"messages": []}, "'messages' must be a non-empty list"),
    ],
)
def test_parse_rejects_with_the_field(raw, message):
    with pytest.raises(RequestError, match=None) as e:
        parse(raw)
    assert message in str(e.value)


def test_media_policy(tmp_path):
    root = tmp_path / "root"
    (root / "v").mkdir(parents=True)
    (root / "v" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    policy = MediaPolicy(root=root)
    assert fetch_video("v/a.mp4", policy, tmp_path, "w") == (root / "v" / "a.mp4").resolve()
    assert fetch_video(f"file://{root}/v/a.mp4", policy, tmp_path, "w").name == "a.mp4"
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    for url in ("../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4"):
        with pytest.raises(RequestError, match="outside the media root"):
            fetch_video(url, policy, tmp_path, "w")
    with pytest.raises(RequestError, match="need the server's --media-root"):
        fetch_video("v/a.mp4", MediaPolicy(), tmp_path, "w")
    with pytest.raises(RequestError, match="type 'image/png'; expected one of video/mp4"):
        fetch_video("data:image/png;base64,AAAA", policy, tmp_path, "w")
    with pytest.raises(RequestError, match="must be base64"):
        fetch_video("data:video/mp4,abc", policy, tmp_path, "w")
    out = fetch_video("data:video/webm;base64," + base64.b64encode(b"webm").decode(), policy,
                      tmp_path, "w")  # fmt: skip
    assert out.suffix == ".webm" and out.read_bytes() == b"webm"
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RequestError, match="w0: undecodable image"):
        fetch_images(["data:image/png;base64," + base64.b64encode(b"nope").decode()],
                     policy, work, ["w0"])  # fmt: skip


def test_buckets():
    assert [row_bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [decode_bucket(n, 512) for n in (1, 16, 17, 100, 512, 600)] == [
        16, 16, 32, 128, 512, 512,
    ]  # fmt: skip


def test_console_scripts_resolve():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("tempura-train", "tempura-infer", "tempura-eval", "tempura-check-data",
                 "tempura-serve", "tempura-demo", "tempura-convert"):  # fmt: skip
        module, func = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    # launch/*.py are thin wrappers over the same functions
    for wrapper, name in (("serve.py", "tempura-serve"), ("webdemo.py", "tempura-demo")):
        module, func = scripts[name].split(":")
        ns = runpy.run_path(str(REPO / "launch" / wrapper), run_name="wrapper")
        assert ns["main"] is getattr(importlib.import_module(module), func), wrapper


def byte_decode(ids: list[int]) -> str:
    """A byte-level tokenizer's decode: each id one byte (partial characters
    decode to U+FFFD, as with Qwen's byte-level BPE)."""
    return bytes(ids).decode("utf-8", errors="replace")


STOP_ID = 999


@pytest.mark.parametrize(
    "answer, stops",
    [
        ("  café: a red circle moves right.  ", ()),
        ("first event. second event.", (". s",)),  # a stop string across feeds
        ("ab\nab \n\ncd", ("\n\n", "zz")),  # the text before a stop keeps its space
        ("naïve – done ✓ end", ("✓",)),  # multi-byte characters and stop string
        ("no stop here", ("here!", "e?")),  # endings that start a stop string
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_text_stream_deltas_join_to_the_answer(answer, stops, chunk):
    from tempura_jax.inference.text_stream import TextStream

    ids = [*answer.encode(), STOP_ID]
    whole, cut = TextStream(byte_decode, [STOP_ID], stops).text_of(ids)
    visible = answer.lstrip()  # the answer is stripped, or all before the first stop
    cuts = [visible.find(s) for s in stops if s in visible]
    reference = visible[: min(cuts)] if cuts else visible.rstrip()
    assert whole == reference and cut == any(s in answer for s in stops)
    stream, deltas = TextStream(byte_decode, [STOP_ID], stops), []
    for n in [*range(1, len(ids), chunk), len(ids)]:  # as the batcher: the whole row last
        deltas.append(stream.feed(ids[:n]))
        assert "\ufffd" not in deltas[-1] and not any(s in "".join(deltas) for s in stops)
        if stream.stopped:
            break
    assert stream.stopped == cut
    assert "".join(deltas) + stream.rest(whole) == whole
    if cut:  # the stop string ended the stream: nothing is left to send
        assert stream.rest(whole) == ""
    assert sum(bool(d) for d in deltas) > 1  # text came before the end
