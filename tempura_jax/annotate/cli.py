"""`tempura-annotate`: build VER-style training data (stage-2 dense captions,
stage-1 masked events) from raw videos with any OpenAI-compatible model.

    tempura-annotate --videos DIR --out OUT --base-url https://api.openai.com/v1 --model gpt-4o
    tempura-annotate ... --shard 3/16        # machine 3 of 16 (0-based), no coordinator
    tempura-annotate --out OUT --merge       # join the 16 shards' outputs
    tempura-annotate ... --dry-run           # request counts and token estimate, no request

Writes OUT/stage2_dense.json, OUT/stage1_masked.json (VER records, media paths
relative to the videos folder: train with data.media_root=<videos>) and
OUT/summary.json; answers are cached under OUT/cache, so a rerun or a
restarted run sends no request for work already done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tempura_jax.annotate import output, prompts
from tempura_jax.annotate.client import ClientConfig, ServerDown
from tempura_jax.annotate.frames import StaticConfig
from tempura_jax.annotate.grid import GridConfig
from tempura_jax.annotate.pipeline import PipelineConfig
from tempura_jax.annotate.run import annotate, list_videos, take_shard


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N (e.g. 0/8), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--grid wants ROWSxCOLS (e.g. 4x4), got {text!r}"
        ) from None
    return rows, cols


def parser() -> argparse.ArgumentParser:
    c, s, g, pc = ClientConfig, StaticConfig, GridConfig, PipelineConfig
    p = argparse.ArgumentParser(
        prog="tempura-annotate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--videos", help="folder of videos (recursive) or a text file of paths")
    p.add_argument("--out", required=True, help="output folder (also holds the cache)")
    p.add_argument("--base-url", default=c.base_url, help="OpenAI-compatible API root")
    p.add_argument("--model", default=c.model, help="model name (part of the cache key)")
    p.add_argument("--api-key-env", default=c.api_key_env, help="env variable with the API key")
    p.add_argument("--metadata", help="JSON lines {video, title, description, transcript}")
    p.add_argument("--concurrency", type=int, default=c.concurrency, help="requests in flight")
    p.add_argument("--shard", type=_shard, help="I/N: this machine's share (I from 0)")
    p.add_argument("--merge", action="store_true", help="join OUT/shards/* into OUT and exit")
    p.add_argument("--dry-run", action="store_true", help="count requests and tokens; send none")
    p.add_argument("--prompts", help="a prompts JSON of your own (default: the packaged one)")
    p.add_argument("--cache", help="cache folder (default OUT/cache; share it across shards)")
    p.add_argument("--timeout", type=float, default=c.timeout, help="seconds per request")
    p.add_argument("--retries", type=int, default=c.retries, help="retries on 429/5xx/timeouts")
    p.add_argument("--backoff", type=float, default=c.backoff, help="first retry delay, s")
    p.add_argument("--backoff-max", type=float, default=c.backoff_max, help="longest delay, s")
    p.add_argument(
        "--answer-retries",
        type=int,
        default=c.answer_retries,
        help="re-asks of an answer that does not validate",
    )
    p.add_argument(
        "--no-structured",
        action="store_true",
        help="send no response_format (the prompt states the schema anyway)",
    )
    p.add_argument("--temperature", type=float, default=c.temperature)
    p.add_argument("--max-tokens", type=int, default=c.max_tokens)
    p.add_argument("--price-input", type=float, default=c.price_input, help="USD / 1M prompt tok")
    p.add_argument("--price-output", type=float, default=c.price_output, help="USD / 1M output tok")
    p.add_argument("--fps", type=float, default=pc.fps, help="frames per second sampled")
    p.add_argument("--max-frames", type=int, default=pc.max_frames, help="most frames per video")
    p.add_argument("--grid", type=_grid, default=(g.rows, g.cols), help="ROWSxCOLS per image")
    p.add_argument("--frame-width", type=int, default=g.frame_width, help="frame width in grids")
    p.add_argument(
        "--tolerance",
        type=float,
        default=pc.tolerance,
        help="repair gaps/overlaps/overhangs up to this many seconds",
    )
    p.add_argument("--seed", type=int, default=pc.seed, help="masked-event choice")
    p.add_argument(
        "--incoherent",
        choices=("masked", "video"),
        default=pc.incoherent,
        help="an incoherent video loses its masked record, or the video",
    )
    p.add_argument(
        "--static-noise",
        type=float,
        default=s.noise,
        help="a second is frozen if fewer pixels than this share changed",
    )
    p.add_argument(
        "--static-pixel-delta",
        type=float,
        default=s.pixel_delta,
        help="a pixel changed if its grey level moved more than this (0-1)",
    )
    p.add_argument("--static-segment", type=float, default=s.segment_s, help="segment, s")
    p.add_argument(
        "--static-freeze",
        type=float,
        default=s.freeze_s,
        help="frozen run (s) that makes a segment frozen",
    )
    p.add_argument(
        "--static-fraction",
        type=float,
        default=s.fraction,
        help="static if at least this share of segments is frozen",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.merge:
        try:
            merged = output.merge(out)
        except (OSError, ValueError) as e:
            print(f"tempura-annotate: merge failed: {e}", file=sys.stderr)
            return 1
        print(json.dumps({k: merged[k] for k in ("videos", "requests", "cost_usd")}, indent=1))
        return 0
    if not a.videos:
        p.error("--videos is required (except with --merge)")
    try:
        client_cfg = ClientConfig(
            base_url=a.base_url,
            model=a.model,
            api_key_env=a.api_key_env,
            concurrency=a.concurrency,
            timeout=a.timeout,
            retries=a.retries,
            backoff=a.backoff,
            backoff_max=a.backoff_max,
            answer_retries=a.answer_retries,
            structured=not a.no_structured,
            temperature=a.temperature,
            max_tokens=a.max_tokens,
            price_input=a.price_input,
            price_output=a.price_output,
        )
        cfg = PipelineConfig(
            fps=a.fps,
            max_frames=a.max_frames,
            grid=dataclasses.replace(
                GridConfig(), rows=a.grid[0], cols=a.grid[1], frame_width=a.frame_width
            ),
            static=StaticConfig(
                pixel_delta=a.static_pixel_delta,
                noise=a.static_noise,
                segment_s=a.static_segment,
                freeze_s=a.static_freeze,
                fraction=a.static_fraction,
            ),
            tolerance=a.tolerance,
            seed=a.seed,
            incoherent=a.incoherent,
        )
        table = prompts.load(a.prompts)
        _, videos = list_videos(a.videos, a.metadata)
        if a.shard:
            videos = take_shard(videos, *a.shard)
    except (OSError, ValueError) as e:
        print(f"tempura-annotate: {e}", file=sys.stderr)
        return 2
    try:
        summary = annotate(
            videos,
            out,
            cfg,
            client_cfg,
            table,
            dry_run=a.dry_run,
            progress=not a.no_progress and sys.stderr.isatty(),
            shard=a.shard,
            cache_dir=Path(a.cache) if a.cache else None,
        )
    except ServerDown as e:
        print(
            f"tempura-annotate: {e}; no output written (answers so far are cached)", file=sys.stderr
        )
        return 3
    brief = {k: summary[k] for k in ("videos", "requests", "tokens", "cost_usd")}
    print(json.dumps(brief, indent=1))
    return 0
