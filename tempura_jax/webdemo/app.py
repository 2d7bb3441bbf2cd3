"""tempura-demo: a browser page over a checkpoint (default: the demo model,
offline). Pick a demo video or upload one, choose the task (dense captions,
grounding query, masked window, highlights, free question) and see the
stamped frames the model saw, its answer, and a timeline of the predicted
events against the ground truth (demo videos).

    tempura-demo [--checkpoint CKPT] [--port 7860]

The page is one static HTML file; uploads travel as `data:` URLs and are
checked like tempura-serve's (mp4/webm, base64, the byte limit).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from tempura_jax.inference import tasks
from tempura_jax.inference.media_input import RequestError
from tempura_jax.webdemo.session import DemoSession

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 64 << 20


def create_app(session: DemoSession) -> FastAPI:
    app = FastAPI(title="tempura-demo")
    lock = threading.Lock()  # one request on the model at a time

    @app.exception_handler(RequestError)
    async def bad_request(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    @app.get("/api/videos")
    async def videos():
        return {
            "videos": [{"name": v.name, "events": v.events} for v in session.videos.values()],
            "tasks": list(tasks.TASKS),
        }

    @app.post("/api/run")
    async def run(request: Request):
        raw = await request.body()
        if len(raw) > MAX_UPLOAD_BYTES:
            raise RequestError(f"the upload is over the limit max_request_bytes={MAX_UPLOAD_BYTES}")
        try:
            body = json.loads(raw)
            video, task = str(body["video"]), str(body.get("task") or "dense")
            query, mask = str(body.get("query") or ""), body.get("mask") or None
            if mask is not None:
                mask = (float(mask[0]), float(mask[1]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise RequestError(f"bad request body ({type(e).__name__}: {e})") from None

        def work():
            with lock:
                try:
                    return session.run(video, task, query, mask)
                except ValueError as e:  # a task without its query or mask, bad media
                    raise RequestError(str(e)) from None

        return await run_in_threadpool(work)

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", help="default: the demo model under --workdir")
    p.add_argument("--workdir", type=Path, default=Path("workdir/demo"), help="demo data/model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="0: any free port (printed)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    import uvicorn

    try:
        session = DemoSession.load(args.checkpoint, args.workdir, args.max_new_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(f"tempura-demo: http://{args.host}:{sock.getsockname()[1]}/", flush=True)
    uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
