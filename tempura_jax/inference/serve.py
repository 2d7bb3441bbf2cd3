"""An OpenAI-compatible video chat server for a TEMPURA checkpoint.

    tempura-serve --checkpoint workdir/demo/stage2/checkpoints --media-root workdir/demo/data

`POST /v1/chat/completions` takes OpenAI chat messages with text,
`image_url` (frames, in order) and `video_url` parts: `data:` URLs (base64
mp4/webm/jpeg/png), `file://` URLs or plain paths inside --media-root, and
http(s) with --allow-remote-media. Extra body fields `task`
(dense|grounding|masked|highlight|free) and `mask` ([start, end] seconds)
send TEMPURA's prompts; the parsed events/windows come back in `tempura`.
`stream: true` answers in server-sent events, the new text after each decode
chunk of --stream-chunk tokens. Concurrent requests are batched
(--batch-size rows, waiting up to --batch-wait-ms for batch-mates).
Frames, stamps and the pixel budget come from the checkpoint (key=value
overrides them, as in tempura-infer). `GET /v1/models`, `GET /health`.
Requests over a limit or with bad media get a 400 naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tempura_jax.inference import chat_request
from tempura_jax.inference.media_input import MediaPolicy, RequestError
from tempura_jax.inference.service import Answer, Limits, Prepared, Service
from tempura_jax.inference.text_stream import TextStream

log = logging.getLogger(__name__)


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def _completion(service: Service, prep: Prepared, ans: Answer) -> dict[str, Any]:
    return {
        "id": prep.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": service.model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ans.text},
                "finish_reason": ans.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(ans),
        "tempura": ans.tempura,
    }


def _usage(ans: Answer) -> dict[str, int]:
    n = len(ans.tokens) + (ans.finish_reason == "stop")
    return {"prompt_tokens": ans.prompt_tokens, "completion_tokens": n,
            "total_tokens": ans.prompt_tokens + n}  # fmt: skip


def _chunk(service: Service, prep: Prepared, delta: dict, finish: str | None, **extra) -> str:
    body = {
        "id": prep.id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": service.model_name,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


async def _stream(
    service: Service, prep: Prepared, future, text: TextStream, pieces: asyncio.Queue
) -> AsyncIterator[str]:
    """The role first (the request is queued), then the text as its batch
    decodes (`pieces`, an asyncio.Queue, gets the new final text after each
    decode chunk, then None), the finish reason with `tempura`, usage if
    asked, `[DONE]`."""
    yield _chunk(service, prep, {"role": "assistant", "content": ""}, None)
    while (piece := await pieces.get()) is not None:
        yield _chunk(service, prep, {"content": piece}, None)
    try:
        row, batch = await asyncio.wrap_future(future)
        ans = service.answer(prep, row, batch)
    except Exception as e:  # noqa: BLE001 - reported in the stream; the server stays up
        log.exception("request %s failed", prep.id)
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    if rest := text.rest(ans.text):
        yield _chunk(service, prep, {"content": rest}, None)
    yield _chunk(service, prep, {}, ans.finish_reason, tempura=ans.tempura)
    if prep.request.include_usage:
        body = {"id": prep.id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": service.model_name, "choices": [], "usage": _usage(ans)}  # fmt: skip
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


def _submit_streaming(service: Service, prep: Prepared) -> StreamingResponse:
    """Queue the request with its text going to an asyncio queue (the batcher
    thread hands each piece to the event loop), and answer with the SSE stream."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    future, text = service.submit(
        prep, on_text=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)
    )
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    stream = _stream(service, prep, future, text, pieces)
    return StreamingResponse(stream, media_type="text/event-stream")


def create_app(service: Service):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="tempura-serve", lifespan=lifespan)
    limit = service.limits.max_request_bytes

    @app.exception_handler(RequestError)
    async def bad_request(request, exc: RequestError):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        log.exception("unexpected error")
        return _error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/health")
    async def health():
        s = service.batcher.stats
        return {"status": "ok", "model": service.model_name, "requests": s.requests,
                "batches": s.batches, "largest_batch": s.largest_batch}  # fmt: skip

    @app.get("/v1/models")
    async def models():
        card = {"id": service.model_name, "object": "model", "created": 0,
                "owned_by": "tempura-jax"}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"the request is {declared} bytes, over the limit "
                               f"max_request_bytes={limit}")  # fmt: skip
        raw = await request.body()
        if len(raw) > limit:
            raise RequestError(f"the request is {len(raw)} bytes, over the limit "
                               f"max_request_bytes={limit}")  # fmt: skip
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not JSON ({e})") from None
        req = chat_request.parse(body)
        prep = await run_in_threadpool(service.prepare, req)
        if req.stream:
            return _submit_streaming(service, prep)
        future, _ = service.submit(prep)
        row, batch = await asyncio.wrap_future(future)
        return _completion(service, prep, service.answer(prep, row, batch))

    return app


def parser() -> argparse.ArgumentParser:
    from tempura_jax.inference import infer

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run checkpoints, a step, or an HF dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--media-root", help="local paths and file:// URLs must be inside it")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) URLs")
    p.add_argument("--model-name", help="the id in /v1/models (default: the checkpoint's name)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="wait for batch-mates")
    p.add_argument("--stream-chunk", type=int, default=8,
                   help="decode steps per call: streams get text, and requests that are "
                        "done leave the batch, after each chunk")  # fmt: skip
    p.add_argument("--max-frames", type=int, help="default: the checkpoint's sampling.max_frames")
    p.add_argument("--max-video-seconds", type=float, default=Limits.max_video_seconds)
    p.add_argument("--max-tokens", type=int, default=Limits.max_tokens, help="per request")
    p.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes)
    infer.add_model_arguments(p)
    p.set_defaults(batch_size=4)
    return p


def build_service(args: argparse.Namespace) -> Service:
    from tempura_jax.inference import infer
    from tempura_jax.inference.generate import SamplingConfig

    predictor = infer.load_from_arguments(args, SamplingConfig(max_new_tokens=args.max_tokens))
    limits = Limits(
        max_frames=args.max_frames or predictor.data.sampling.max_frames,
        max_video_seconds=args.max_video_seconds,
        max_tokens=args.max_tokens,
        max_request_bytes=args.max_request_bytes,
    )
    policy = MediaPolicy(
        root=Path(args.media_root) if args.media_root else None,
        allow_remote=args.allow_remote_media,
        max_bytes=args.max_request_bytes,
    )
    name = args.model_name or Path(args.checkpoint).resolve().name
    return Service(predictor, name, limits, policy, args.batch_wait_ms / 1000, args.stream_chunk)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    try:
        service = build_service(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e})", file=sys.stderr)
        return 2
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    print(f"tempura-serve: {service.model_name} on http://{args.host}:{port}/v1", flush=True)
    config = uvicorn.Config(create_app(service), log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
