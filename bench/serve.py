"""tempura-serve throughput and latency: requests/s and p50/p99 latency at 1, 4
and 16 concurrent clients (openai client, non-streaming, greedy, dense task)
on a tiny random model over the demo videos, on this machine's CPU.

    python bench/serve.py --out bench/results/serve_tiny_cpu.json

Every video is sent once first (compiling its shape bucket); each level then
sends `--warmup` unmeasured waves (batch shapes first seen compile there; one
first seen later is in the numbers) and `--rounds` requests per client, each client one
request at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start(args: list[str]) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tempura_jax.inference.serve", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    line = ""
    for line in proc.stdout:  # logs may come before the line with the address
        if "http://" in line:
            break
    if "http://" not in line:
        raise SystemExit(f"server did not start: {line}{proc.stdout.read()[-2000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--rounds", type=int, default=3, help="requests per client per level")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured waves per level first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    import openai

    from tempura_jax.config import tiny
    from tempura_jax.data.demo import DemoSpec, make_demo_data
    from tempura_jax.random_checkpoint import write_random_hf_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    demo = make_demo_data(tmp / "data", DemoSpec(num_videos=4, min_seconds=10, max_seconds=16))
    write_random_hf_checkpoint(tiny(), tmp / "model", dtype="float32")
    proc, port = start([
        "--checkpoint", str(tmp / "model"), "--tokenizer", demo["tokenizer"],
        "--media-root", demo["media_root"], "--model-name", "tiny",
        "--batch-size", str(a.batch_size), "--max-tokens", str(a.max_tokens),
        "pixels.min_pixels=6272", "pixels.max_pixels=6272", "max_seq_len=1024",
    ])  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    videos = sorted(str(v.relative_to(demo["media_root"]))
                    for v in Path(demo["media_root"], "videos").glob("*.mp4"))  # fmt: skip

    def one(i: int) -> tuple[float, int]:
        msg = [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": videos[i % len(videos)]}}]}]  # fmt: skip
        t = time.perf_counter()
        r = client.chat.completions.create(model="tiny", messages=msg, max_tokens=a.max_tokens,
                                           extra_body={"task": "dense"})  # fmt: skip
        return time.perf_counter() - t, r.model_extra["tempura"]["batch_size"]

    def client_loop(c: int, rounds: int) -> list[tuple[float, int]]:
        return [one(c * rounds + k) for k in range(rounds)]

    results = []
    try:
        for i in range(len(videos)):  # compile every video's shape bucket first
            one(i)
        for level in (int(x) for x in a.levels.split(",")):
            with ThreadPoolExecutor(level) as pool:
                list(pool.map(lambda c: client_loop(c, a.warmup), range(level)))  # compiles
                t = time.perf_counter()
                runs = list(pool.map(lambda c: client_loop(c, a.rounds), range(level)))
                wall = time.perf_counter() - t
            lat = np.array([x for run in runs for x, _ in run])
            sizes = [b for run in runs for _, b in run]
            row = {
                "clients": level,
                "requests": len(lat),
                "requests_per_s": round(len(lat) / wall, 3),
                "p50_s": round(float(np.percentile(lat, 50)), 3),
                "p99_s": round(float(np.percentile(lat, 99)), 3),
                "mean_batch": round(float(np.mean(sizes)), 2),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        proc.terminate()
        proc.wait(30)
    out = {
        "what": "tempura-serve, tiny random model, demo videos (10-16 s, 56x84 frames), "
        f"dense task, greedy, max_tokens={a.max_tokens}, batch_size={a.batch_size}",
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)",
        "results": results,
    }
    if a.out:
        tmp_out = a.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(out, indent=2) + "\n")
        tmp_out.replace(a.out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
