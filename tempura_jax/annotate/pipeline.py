"""The per-video VER pipeline (paper Sec. 4, S1): static filter, category,
segmentation from frame grids, event descriptions, validation and repair,
coherence check, masked event. Every stage's result is cached (`store`), so
a rerun or a restarted run asks nothing it already has; frames are decoded
only when a stage that needs them is not cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from tempura_jax.annotate import answers, frames, grid
from tempura_jax.annotate.client import ApiError, Client
from tempura_jax.annotate.prompts import Prompts
from tempura_jax.annotate.repair import repair_events
from tempura_jax.annotate.store import StageCache, content_hash
from tempura_jax.data.events import Event
from tempura_jax.data.media import MediaError
from tempura_jax.overrides import option

REASONS = ("static", "talking", "unreadable", "invalid_events", "incoherent", "api_error")
LOCAL = "local"  # the "model" of stages computed here (the static filter)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    fps: float = option(1.0, "frames sampled per second (paper: 1)")
    max_frames: int = option(512, "most frames per video; longer videos are sampled uniformly")
    grid: grid.GridConfig = grid.GridConfig()
    static: frames.StaticConfig = frames.StaticConfig()
    tolerance: float = option(1.0, "gaps/overlaps/overhangs up to this many seconds are repaired")
    seed: int = option(0, "masked-event choice (per video, stable across shards)")
    incoherent: str = option("masked", "masked: keep the dense record, no masked one; video: drop")
    metadata_chars: int = option(4000, "most characters of --metadata text sent per video")

    def __post_init__(self):
        if self.incoherent not in ("masked", "video"):
            raise ValueError(f"incoherent must be masked or video, got {self.incoherent!r}")


@dataclasses.dataclass(frozen=True)
class Video:
    path: Path
    rel: str  # the records' media path: relative to the videos folder
    metadata: dict | None = None


class Dropped(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class NeedsRequest(Exception):
    """Raised in a dry run at the first stage that would send a request."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _events_text(
    spans: list, descriptions: list[str] | None = None, hide: int | None = None
) -> str:
    lines = []
    for i, (start, end) in enumerate(spans):
        line = f"{i + 1}. {start:.1f} s to {end:.1f} s"
        if descriptions is not None:
            line += ": " + ("[hidden]" if i == hide else descriptions[i])
        lines.append(line)
    return "\n".join(lines)


class VideoJob:
    """One video through the stages; `run()` returns its result dict."""

    def __init__(
        self,
        video: Video,
        cfg: PipelineConfig,
        prompts: Prompts,
        cache: StageCache,
        client: Client | None,
        model: str,
        dry: bool = False,
    ):
        self.video, self.cfg, self.prompts, self.cache = video, cfg, prompts, cache
        self.client, self.model, self.dry = client, model, dry
        self._clip = None
        self.hash = ""
        self.duration = 0.0
        self.probe: dict = {}

    # -- frames, decoded once and only when needed ------------------------------------
    def clip(self):
        if self._clip is None:
            c = self.cfg
            self._clip = frames.frames_at(
                str(self.video.path), c.fps, c.max_frames, c.grid.frame_width
            )
        return self._clip

    def _frames_note(self) -> str:
        return self.prompts.frames_note.format(fps=self.cfg.fps, duration=self.duration)

    def _images(self, overview: bool = False) -> list[dict]:
        clip = self.clip()
        pics, times = list(clip.frames), list(clip.times)
        if overview:
            pics, times = grid.overview(pics, times, self.cfg.grid)
        return [
            {"type": "image_url", "image_url": {"url": grid.data_url(g, self.cfg.grid.quality)}}
            for g in grid.grids(pics, times, self.cfg.grid)
        ]

    # -- one cached request --------------------------------------------------------------
    def ask(
        self, stage: str, system: str, user: str, images: str | None = None, check=None, extra=None
    ):
        """The cached answer, or a new one. `images` ("all" | "overview") adds the
        frame grids; they enter the key through the grid/sampling settings, as
        `extra` (what `check` depends on) does."""
        image_key = (
            dataclasses.asdict(self.cfg.grid) | {"fps": self.cfg.fps, "max": self.cfg.max_frames}
            if images
            else None
        )
        key = f"{stage}-{_digest([system, user, images, image_key, extra])}"
        hit = self.cache.get(self.hash, key, self.prompts.version, self.model)
        if hit is not None:
            if self.client is not None:
                self.client.tally.add("cached", stage)
            if isinstance(hit, dict) and "invalid" in hit:
                raise answers.InvalidAnswer(hit["invalid"])
            return hit["answer"]
        if self.dry:
            raise NeedsRequest(stage)
        schema = json.dumps(answers.schema(stage, self.prompts.categories))
        content: list[dict] = [
            {"type": "text", "text": user + self.prompts.schema_note.format(schema=schema)}
        ]
        if images:
            content += self._images(overview=images == "overview")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        try:
            value = self.client.ask(stage, messages, check, headers={"X-Tempura-Video": self.hash})
        except answers.InvalidAnswer as e:  # no valid answer in N tries: final, so cached too
            self.cache.put(self.hash, key, self.prompts.version, self.model, {"invalid": str(e)})
            raise
        self.cache.put(self.hash, key, self.prompts.version, self.model, {"answer": value})
        return value

    # -- stages ----------------------------------------------------------------------------
    def static(self) -> dict:
        c = self.cfg
        key = f"static-{_digest([c.fps, c.max_frames, c.grid.frame_width, c.static.pixel_delta])}"
        hit = self.cache.get(self.hash, key, "frames-1", LOCAL)
        if hit is None:
            if self.dry:
                return {"static": False}
            clip = self.clip()
            hit = {
                "changes": frames.changed_fractions(clip.frames, c.static.pixel_delta),
                "times": [float(t) for t in clip.times],
            }
            self.cache.put(self.hash, key, "frames-1", LOCAL, hit)
        return frames.static_verdict(hit["changes"], hit["times"], c.static)

    def category(self) -> dict:
        p, meta = self.prompts, self.video.metadata
        cats = "; ".join(p.categories)
        if meta:
            text = "\n".join(f"{k}: {v}" for k, v in meta.items() if k != "video" and v)
            user = p.text(
                "category",
                "user_metadata",
                metadata=text[: self.cfg.metadata_chars],
                categories=cats,
            )
            return self.ask("category", p.text("category", "system"), user)
        user = p.text("category", "user_frames", frames_note=self._frames_note(), categories=cats)
        return self.ask("category", p.text("category", "system"), user, images="overview")

    def segments(self) -> list[list[float]]:
        p = self.prompts
        user = p.text("segments", "user", frames_note=self._frames_note(), duration=self.duration)
        check = lambda a: repair_events(a["events"], self.duration, self.cfg.tolerance)  # noqa: E731
        system = p.text("segments", "system")
        return self.ask("segments", system, user, "all", check, extra=self.cfg.tolerance)

    def descriptions(self, spans: list) -> list[str]:
        p = self.prompts

        def check(a):
            if len(a["descriptions"]) != len(spans):
                raise answers.InvalidAnswer(
                    f"{len(a['descriptions'])} descriptions for {len(spans)} events"
                )
            return a["descriptions"]

        user = p.text(
            "descriptions",
            "user",
            frames_note=self._frames_note(),
            events=_events_text(spans),
            count=len(spans),
        )
        return self.ask(
            "descriptions", p.text("descriptions", "system"), user, images="all", check=check
        )

    def coherence(self, spans, descriptions) -> dict:
        p = self.prompts
        user = p.text("coherence", "user", events=_events_text(spans, descriptions))
        return self.ask("coherence", p.text("coherence", "system"), user)

    def masked(self, spans, descriptions) -> dict | None:
        if len(spans) < 2:
            return None
        rng = random.Random(f"{self.cfg.seed}:{self.hash}")
        k = rng.randrange(1, len(spans) - 1) if len(spans) >= 3 else rng.randrange(len(spans))
        p = self.prompts
        start, end = spans[k]
        context = _events_text(spans, descriptions, hide=k)
        user = p.text(
            "masked_event", "user", start=start, end=end, context=context, hidden=descriptions[k]
        )
        answer = self.ask("masked_event", p.text("masked_event", "system"), user)
        return {"index": k, "reasoning": answer["reasoning"], "event": answer["event"]}

    def run(self) -> dict:
        out: dict[str, Any] = {"video": self.video.rel}
        try:
            try:
                self.hash = content_hash(self.video.path)
                self.probe = frames.probe(str(self.video.path), self.cfg.fps, self.cfg.max_frames)
            except (MediaError, OSError) as e:
                raise Dropped("unreadable", str(e)) from e
            self.duration = self.probe["duration"]
            out.update(
                hash=self.hash, duration=round(self.duration, 3), frames=self.probe["frames"]
            )
            try:
                verdict = self.static()
            except MediaError as e:
                raise Dropped("unreadable", str(e)) from e
            if verdict["static"]:
                raise Dropped(
                    "static",
                    f"{verdict['frozen_segments']} of {verdict['segments']} segments frozen",
                )
            cat = self.category()
            out["category"] = cat["category"]
            if cat["talking"]:
                raise Dropped("talking", f"{cat['category']}: dominated by talking")
            try:
                spans = self.segments()
                descriptions = self.descriptions(spans)
            except answers.InvalidAnswer as e:
                raise Dropped("invalid_events", str(e)) from e
            out["events"] = [[a, b, d] for (a, b), d in zip(spans, descriptions, strict=True)]
            coherent = self.coherence(spans, descriptions)
            out["coherent"] = coherent["coherent"]
            if not coherent["coherent"]:
                out["masked_skipped"] = "incoherent"
                if self.cfg.incoherent == "video":
                    raise Dropped("incoherent", coherent["reasoning"][:200])
            else:
                out["masked"] = self.masked(spans, descriptions)
                if out["masked"] is None:
                    out["masked_skipped"] = "few_events"
            out["status"] = "kept"
        except Dropped as d:
            out.update(status="dropped", reason=d.reason, detail=d.detail)
        except NeedsRequest as n:
            out.update(status="dry", first_request=n.stage)
        except ApiError as e:
            out.update(status="dropped", reason="api_error", detail=str(e))
        except answers.InvalidAnswer as e:  # category, coherence, masked: no valid answer
            out.update(status="dropped", reason="api_error", detail=str(e))
        return out


def events_of(result: dict) -> list[Event]:
    return [Event(a, b, d) for a, b, d in result["events"]]
