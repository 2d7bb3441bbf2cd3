"""A real OpenAI-compatible HTTP server for the annotation tests (FastAPI +
uvicorn on 127.0.0.1, a free port, in a thread). It answers
`/v1/chat/completions` from the demo set's known events, finds the video by
the `X-Tempura-Video` header (its content hash), counts every request, and
injects faults on a schedule: malformed JSON, overlapping or out-of-range
events, HTTP 429 and 500, and a reply slower than the client's timeout."""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import json
import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

LINE = re.compile(r"^(\d+)\. (\d+(?:\.\d+)?) s to (\d+(?:\.\d+)?) s(: \[hidden\])?", re.MULTILINE)


class FakeServer:
    """`known`: content hash -> {"name", "duration", "events": [(start, end, caption)]}.
    `faults`: (name, stage) -> list of faults, one consumed per request
    ("malformed", "overlap", "out_of_range", "bad_overlap", "429", "500", "slow").
    `talking` / `incoherent`: names answered so."""

    def __init__(self, known, faults=None, talking=(), incoherent=(), slow_s=0.8):
        self.known, self.talking, self.incoherent, self.slow_s = known, talking, incoherent, slow_s
        self.faults = collections.defaultdict(list, {k: list(v) for k, v in (faults or {}).items()})
        self.log: list[dict] = []  # one entry per request received
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def count(self, **match) -> int:
        with self._lock:
            return sum(all(e.get(k) == v for k, v in match.items()) for e in self.log)

    # -- the endpoint ---------------------------------------------------------------------
    async def _chat(self, request: Request):
        body = await request.json()
        video = self.known.get(request.headers.get("x-tempura-video", ""), {})
        name = video.get("name", "?")
        fmt = body.get("response_format") or {}
        stage = fmt.get("json_schema", {}).get("name", "?")
        parts = body["messages"][-1]["content"]
        text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
        images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        for url in images:  # each must be a real JPEG
            Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
        with self._lock:
            fault = self.faults[(name, stage)].pop(0) if self.faults[(name, stage)] else None
            self.log.append({"name": name, "stage": stage, "images": len(images), "fault": fault})
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, 429)
        if fault == "500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        content = (
            "{not json"
            if fault == "malformed"
            else json.dumps(self._answer(video, stage, text, fault))
        )
        return {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(text) // 4 + 300 * len(images),
                "completion_tokens": len(content) // 4,
                "total_tokens": len(text) // 4 + 300 * len(images) + len(content) // 4,
            },
        }

    def _answer(self, video: dict, stage: str, text: str, fault: str | None) -> dict:
        name, events = video.get("name", "?"), video.get("events", [])
        if stage == "category":
            return {"category": "DIY & Creative Arts", "talking": name in self.talking}
        if stage == "segments":
            spans = [[s, e] for s, e, _ in events]
            if fault == "overlap":  # within the repair tolerance
                spans[1][0] -= 0.6
            if fault == "out_of_range":  # overhangs the end, plus an event past it
                spans[-1][1] += 0.7
                spans.append([video["duration"] + 2, video["duration"] + 5])
            if fault == "bad_overlap":  # far beyond the tolerance: unrepairable
                spans[1][0] -= 3.0
            return {"events": [{"start": a, "end": b} for a, b in spans]}
        lines = LINE.findall(text)
        if stage == "descriptions":
            return {
                "descriptions": [self._caption(events, float(a), float(b)) for _, a, b, _ in lines]
            }
        if stage == "coherence":
            ok = name not in self.incoherent
            return {"reasoning": "Each event changes the same shapes in turn.", "coherent": ok}
        if stage == "masked_event":
            (_, a, b, _) = next(ln for ln in lines if ln[3])
            return {
                "reasoning": "The shape seen before the gap must turn into the one seen after it.",
                "event": self._caption(events, float(a), float(b)),
            }
        raise ValueError(stage)

    @staticmethod
    def _caption(events, a: float, b: float) -> str:
        return max(events, key=lambda e: min(e[1], b) - max(e[0], a))[2]
