"""A whole annotation run: list the videos, take this shard's share, run the
videos concurrently, tally, and write the outputs (or, in a dry run, count
the requests and estimate the tokens without sending any)."""

from __future__ import annotations

import json
import math
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from tempura_jax.annotate import answers, grid, output
from tempura_jax.annotate.client import Client, ClientConfig, ServerDown, Tally
from tempura_jax.annotate.pipeline import PipelineConfig, Video, VideoJob
from tempura_jax.annotate.prompts import Prompts
from tempura_jax.annotate.store import StageCache
from tempura_jax.data.media import VIDEO_SUFFIXES

# Rough completion sizes for --dry-run (tokens per request, per event where noted).
COMPLETION_ESTIMATE = {"category": 20, "coherence": 150, "masked_event": 200}
COMPLETION_PER_EVENT = {"segments": 14, "descriptions": 60}
SECONDS_PER_EVENT = 10.0  # guessed event length for estimates before segmentation


def _meta_keys(video: str) -> tuple[str, ...]:
    p = Path(video)
    return (p.as_posix(), p.name, p.stem)


def read_metadata(path: str | Path) -> dict[str, dict]:
    """JSON lines `{"video": <relative path, file name or stem>, "title": ...,
    "description": ..., "transcript": ...}`, by each of those keys."""
    out = {}
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: {e.msg}") from e
        if not isinstance(row, dict) or not isinstance(row.get("video"), str):
            raise ValueError(f"{path}: line {n}: needs a string field 'video'")
        for key in _meta_keys(row["video"]):
            out.setdefault(key, row)
    return out


def list_videos(videos: str | Path, metadata: str | Path | None = None) -> tuple[Path, list[Video]]:
    """(media root, videos sorted by relative path). `videos` is a folder
    (searched recursively for video files) or a text file of paths, one a
    line, relative to the file's folder."""
    videos = Path(videos)
    if videos.is_dir():
        root = videos
        paths = [p for p in videos.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    elif videos.is_file():
        root = videos.parent
        lines = [ln.strip() for ln in videos.read_text("utf-8").splitlines()]
        paths = [root / ln for ln in lines if ln and not ln.startswith("#")]
    else:
        raise FileNotFoundError(f"{videos}: no such folder or list file")
    meta = read_metadata(metadata) if metadata else {}
    out = []
    for p in paths:
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = str(p)  # outside the root: an absolute media path
        row = next((meta[k] for k in _meta_keys(rel) if k in meta), None)
        out.append(Video(p, rel, row))
    return root, sorted(out, key=lambda v: v.rel)


def take_shard(videos: list[Video], index: int, count: int) -> list[Video]:
    """Every count-th video from `index`: machines listing the same folder
    split it with no coordinator."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")
    return videos[index::count]


def _estimate(job: VideoJob, first: str, tally: Tally) -> None:
    """Requests and tokens a dry run expects from `first` on (an upper bound:
    it assumes the video survives every filter)."""
    cfg, p = job.cfg, job.probe
    g = cfg.grid
    fh = max(2, round(p["height"] * g.frame_width / p["width"] / 2) * 2)
    events = max(1.0, job.duration / SECONDS_PER_EVENT)
    n_grids = math.ceil(p["frames"] / g.per_image)
    stages = answers.STAGES[answers.STAGES.index(first) :]
    for stage in stages:
        per_grid = grid.image_tokens(g.cols * g.frame_width + (g.cols - 1) * g.gap, g.rows * fh)
        images = {"category": 0 if job.video.metadata else 1, "segments": n_grids}.get(stage, 0)
        images = n_grids if stage == "descriptions" else images
        text = sum(len(t) for t in job.prompts.stages[stage].values()) // 4 + 200
        tally.add("requests", stage)
        tally.add("prompt_tokens", stage, int(text + images * per_grid))
        completion = COMPLETION_ESTIMATE.get(stage) or COMPLETION_PER_EVENT[stage] * events
        tally.add("completion_tokens", stage, int(completion))


def annotate(
    videos: list[Video],
    out: Path,
    cfg: PipelineConfig,
    client_cfg: ClientConfig,
    prompts: Prompts,
    dry_run: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Run (or, dry, estimate) the pipeline on `videos`; returns the summary.
    Outputs go to `out`, or to its shard folder; a dry run writes nothing,
    and a run that finds the server down raises ServerDown before writing."""
    cache = StageCache(cache_dir or out / "cache")
    tally = Tally()
    client = Client(client_cfg, tally, prompts.categories)
    jobs = [VideoJob(v, cfg, prompts, cache, client, client_cfg.model, dry_run) for v in videos]
    results: list[dict] = [{}] * len(jobs)
    bar = tqdm(total=len(jobs), unit="video", disable=not progress, desc="annotate")
    with ThreadPoolExecutor(max(1, client_cfg.concurrency)) as pool:
        futures = {pool.submit(job.run): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                if isinstance(f.exception(), ServerDown):
                    for other in pending:
                        other.cancel()
                    bar.close()
                    raise f.exception()
                results[futures[f]] = f.result()
                bar.update(1)
    bar.close()
    if dry_run:
        for job, r in zip(jobs, results, strict=True):
            if r.get("status") == "dry":
                _estimate(job, r["first_request"], tally)
    meta = {
        "prompt_version": prompts.version,
        "model": client_cfg.model,
        "dry_run": dry_run,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
    }
    target = output.shard_dir(out, *shard) if shard else out
    summary_ = output.summary(results, tally.summary(client_cfg), meta)
    if dry_run:
        summary_["videos"]["to_annotate"] = sum(r.get("status") == "dry" for r in results)
        return summary_
    return output.write(target, results, tally.summary(client_cfg), meta)
