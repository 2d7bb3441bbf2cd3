"""The tempura-demo page: a Gradio Blocks app over a DemoSession. Pick a demo
video or upload one, choose the task and its inputs, and see the answer, the
timeline of predicted events (against the ground truth for demo videos), the
same spans as a table, and the stamped frames the model saw.

Offline by construction: no analytics or version check (analytics off, also
in the environment before gradio is imported), no share link, no server-side
rendering (Node), and the default theme's fonts are served by the app itself."""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import socket  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from tempura_jax.inference import tasks  # noqa: E402
from tempura_jax.webdemo.session import DemoSession  # noqa: E402
from tempura_jax.webdemo.timeline import table_rows, timeline_figure  # noqa: E402

MAX_UPLOAD_BYTES = 64 << 20
TASK_CHOICES = [
    ("dense captions", "dense"),
    ("grounding query", "grounding"),
    ("masked window", "masked"),
    ("highlights", "highlight"),
    ("free question", "free"),
]
TABLE_HEADERS = ["row", "start s", "end s", "caption / score"]


def run_request(
    session: DemoSession,
    video: str | None,
    upload: str | None,
    task: str,
    query: str | None,
    mask_start: float | None,
    mask_end: float | None,
) -> tuple[str, Any, list[list[Any]], list[tuple[Any, str]]]:
    """One click: (answer, timeline figure, event table, gallery). Bad input is
    a gr.Error, shown on the page with its reason."""
    source = upload or video
    if not source:
        raise gr.Error("video: pick a demo video or upload one")
    mask = None
    if mask_start is not None and mask_end is not None:
        if not 0 <= mask_start < mask_end:
            raise gr.Error(f"mask: need 0 <= start < end seconds, got {mask_start}, {mask_end}")
        mask = (float(mask_start), float(mask_end))
    try:
        result = session.run(source, task, query or "", mask)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    figure = timeline_figure(result.duration, result.parsed, result.truth, result.mask)
    gallery = [(f, f"{t:.1f} s") for f, t in zip(result.frames, result.times, strict=True)]
    table = table_rows(result.parsed, result.truth)
    return result.answer or "(empty answer)", figure, table, gallery


def _inputs_for(task: str) -> tuple[Any, Any]:
    """Show the query box and the mask window only for the tasks that use them."""
    spec = tasks.get(task)
    return gr.update(visible=spec.needs_query), gr.update(visible=spec.needs_mask)


def build_demo(session: DemoSession) -> gr.Blocks:
    names = sorted(session.videos)
    # delete_cache: the gallery's frames and uploads older than an hour go, hourly
    blocks = gr.Blocks(title="tempura-demo", analytics_enabled=False, delete_cache=(3600, 3600))
    with blocks as demo:
        gr.Markdown("# tempura-demo\nTEMPURA's event timeline for a video, from the checkpoint.")
        with gr.Row():
            with gr.Column():
                video = gr.Dropdown(names, value=names[0] if names else None,
                                    label="demo video", elem_id="video")  # fmt: skip
                upload = gr.Video(label="or upload a video (used instead of the demo video)",
                                  sources=["upload"], elem_id="upload")  # fmt: skip
            with gr.Column():
                task = gr.Radio(TASK_CHOICES, value="dense", label="task", elem_id="task")
                query = gr.Textbox(label="query (grounding, highlights) or question (free)",
                                   visible=False, elem_id="query")  # fmt: skip
                with gr.Row(visible=False) as mask_row:
                    mask_start = gr.Number(label="masked from (s)", elem_id="mask_start")
                    mask_end = gr.Number(label="to (s)", elem_id="mask_end")
                button = gr.Button("Run", variant="primary", elem_id="run")
        answer = gr.Textbox(label="answer", interactive=False, elem_id="answer")
        timeline = gr.Plot(label="timeline: predicted and ground truth", format="png",
                           elem_id="timeline")  # fmt: skip
        table = gr.Dataframe(headers=TABLE_HEADERS, label="events on the timeline",
                             interactive=False, elem_id="events")  # fmt: skip
        frames = gr.Gallery(label="stamped frames the model saw", columns=8, format="jpeg",
                            object_fit="contain", elem_id="frames")  # fmt: skip
        task.change(_inputs_for, task, [query, mask_row], queue=False, api_visibility="private")
        button.click(
            lambda *a: run_request(session, *a),
            [video, upload, task, query, mask_start, mask_end],
            [answer, timeline, table, frames],
            api_name="run",  # also for gradio_client: Client(url).predict(..., api_name="/run")
            concurrency_limit=1,  # one request on the model at a time
        )
    return demo


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 0) -> str:
    """Serve `demo` in the background (port 0: a free one); returns its URL."""
    demo.launch(server_name=host, server_port=port or free_port(host), share=False,
                ssr_mode=False, prevent_thread_lock=True, quiet=True, show_error=True,
                max_file_size=MAX_UPLOAD_BYTES, mcp_server=False)  # fmt: skip
    return demo.local_url
