"""Offline demo data: synthetic shape videos with exact events, in every
annotation format the project reads, plus a tiny tokenizer that matches the
`tiny` model's special token ids.

Each video is a script of events that cover it end to end (a shape appears,
moves, grows, shrinks, changes colour, disappears); frames are rendered from
the script, so the ground truth is exact by construction.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from tempura_jax.config import ModelConfig, tiny
from tempura_jax.data.events import PROMPTS, Event, format_events, masked_sample
from tempura_jax.data.records import ver_record
from tempura_jax.data.video_io import write_video

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "diamond")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
WIDTH, HEIGHT, FPS = 320, 180, 8.0


@dataclasses.dataclass
class Shape:
    kind: str
    colour: str
    x: float
    y: float
    r: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclasses.dataclass
class Step:
    """One event: what it does to the scene, and its caption."""

    start: float
    end: float
    action: str
    caption: str
    before: list[Shape]
    after: list[Shape]
    target: int | None  # index into `after` (or `before` when it disappears)


def _place(rng: np.random.Generator, r: float) -> tuple[float, float]:
    return float(rng.uniform(r + 10, WIDTH - r - 10)), float(rng.uniform(r + 30, HEIGHT - r - 5))


def _where(x: float) -> str:
    return (
        "on the left" if x < WIDTH / 3 else "on the right" if x > 2 * WIDTH / 3 else "in the middle"
    )


def script(rng: np.random.Generator, duration: float) -> list[Step]:
    """Random events that exactly tile [0, duration]."""
    bounds = [0.0]
    while duration - bounds[-1] > 4.0:
        bounds.append(round(bounds[-1] + float(rng.uniform(2.0, 6.0)), 1))
    if duration - bounds[-1] < 2.0 and len(bounds) > 1:
        bounds.pop()
    bounds.append(round(duration, 1))
    scene: list[Shape] = []
    steps = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        before = [dataclasses.replace(s) for s in scene]
        options = ["appear"] if len(scene) < 3 else []
        if scene:
            options += ["move", "move", "grow", "shrink", "recolour"]
            if len(scene) > 1 or len(steps) > 2:
                options.append("disappear")
        action = str(rng.choice(options)) if scene else "appear"
        target = None
        if action == "appear":
            used = {(s.kind, s.colour) for s in scene}
            while True:
                kind, colour = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS)))
                if (kind, colour) not in used:
                    break
            r = float(rng.uniform(14, 24))
            shape = Shape(kind, colour, *_place(rng, r), r)
            scene.append(shape)
            target = len(scene) - 1
            caption = f"A {shape.name} appears {_where(shape.x)} of the frame"
        else:
            target = int(rng.integers(len(scene)))
            s = scene[target]
            if action == "move":
                options = [
                    d
                    for d, (dx, dy) in DIRECTIONS.items()
                    if s.r + 5 < s.x + dx * 60 < WIDTH - s.r - 5
                    and s.r + 25 < s.y + dy * 50 < HEIGHT - s.r - 5
                ]
                d = str(rng.choice(options)) if options else "left"
                dx, dy = DIRECTIONS[d]
                if options:
                    s.x, s.y = s.x + dx * 60, s.y + dy * 50
                caption = f"The {s.name} moves {d}" if options else f"The {s.name} stays still"
            elif action == "grow":
                s.r = min(s.r * 1.6, 40)
                caption = f"The {s.name} grows larger"
            elif action == "shrink":
                s.r = max(s.r / 1.6, 8)
                caption = f"The {s.name} shrinks"
            elif action == "recolour":
                old = s.name
                s.colour = str(rng.choice([c for c in COLOURS if c != s.colour]))
                caption = f"The {old} turns {s.colour}"
            else:
                caption = f"The {s.name} disappears"
                scene.pop(target)
        steps.append(
            Step(
                start,
                end,
                action,
                caption + ".",
                before,
                [dataclasses.replace(s) for s in scene],
                target,
            )
        )
    return steps


def _draw(img: np.ndarray, s: Shape, colour) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    dx, dy = np.abs(xx - s.x), np.abs(yy - s.y)
    if s.kind == "circle":
        mask = dx**2 + dy**2 <= s.r**2
    elif s.kind == "square":
        mask = (dx <= s.r * 0.85) & (dy <= s.r * 0.85)
    else:
        mask = dx + dy <= s.r * 1.2
    img[mask] = colour


def render(step: Step, t: float) -> np.ndarray:
    """The frame at time t inside `step`: the action interpolated over its span."""
    u = min(1.0, max(0.0, (t - step.start) / max(step.end - step.start, 1e-6)))
    u = min(1.0, u * 1.5)  # finish the motion a little before the event ends
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = (24, 26, 32)
    shown = step.after if step.action != "disappear" else step.before
    for i, s in enumerate(shown):
        s = dataclasses.replace(s)
        colour = COLOURS[s.colour]
        if i == step.target and step.action in ("move", "grow", "shrink", "recolour"):
            b = step.before[i]
            s.x, s.y, s.r = (b.x + (s.x - b.x) * u, b.y + (s.y - b.y) * u, b.r + (s.r - b.r) * u)
            colour = tuple(
                int(a + (c - a) * u)
                for a, c in zip(COLOURS[b.colour], COLOURS[s.colour], strict=True)
            )
        if i == step.target and step.action == "appear":
            s.r *= max(u, 0.05)
        if i == step.target and step.action == "disappear":
            s.r *= max(1 - u, 0.0)
        if s.r > 0.5:
            _draw(img, s, colour)
    return img


def frames_of(steps: list[Step], fps: float = FPS):
    duration = steps[-1].end
    k = 0
    for i in range(int(math.floor(duration * fps - 1e-9)) + 1):
        t = i / fps
        while k + 1 < len(steps) and t >= steps[k].end:
            k += 1
        yield render(steps[k], t)


# --- tokenizer -------------------------------------------------------------------

QWEN_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer(out: str | Path, corpus: list[str], cfg: ModelConfig | None = None) -> Path:
    """A byte-level BPE with Qwen's pre-tokenizer, trained on `corpus`, whose
    special tokens sit at the ids `cfg` expects (the `tiny` preset's by default):
    <|endoftext|>, <|im_start|>, <|im_end|> just below <|vision_start|>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    cfg = cfg or tiny()
    first_special = cfg.vision_start_token_id - 3
    if not (
        cfg.vision_end_token_id == first_special + 4
        and cfg.image_token_id == first_special + 5
        and cfg.video_token_id == first_special + 6
    ):
        raise ValueError("write_tokenizer needs consecutive vision token ids (as in `tiny`)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=first_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    n = tok.get_vocab_size()
    if n > first_special:
        raise ValueError(f"trained vocabulary ({n}) overflows the special ids at {first_special}")
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(first_special - n)])
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok.add_special_tokens(specials)
    rest = cfg.text.vocab_size - tok.get_vocab_size()
    tok.add_special_tokens([f"<|reserved_{first_special + 7 + i}|>" for i in range(max(rest, 0))])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 32768,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    return out


# --- data set ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoSpec:
    num_videos: int = 12
    min_seconds: float = 10.0
    max_seconds: float = 40.0
    frame_folders: int = 2  # how many videos are also stored as VER 1-FPS frame folders
    seed: int = 0
    prompts: str = "reference"  # a key of data.events.PROMPTS: the human turns' wording


def make_demo_data(out: str | Path, spec: DemoSpec = DemoSpec()) -> dict[str, str]:
    """Write videos, annotations and a tokenizer under `out`; returns the paths."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    dense_prompt, masked_prompt = PROMPTS[spec.prompts]["dense"], PROMPTS[spec.prompts]["masked"]
    stage1, stage2, charades, qvh, corpus = [], [], [], [], []
    for v in range(spec.num_videos):
        duration = round(float(rng.uniform(spec.min_seconds, spec.max_seconds)), 1)
        steps = script(rng, duration)
        name = f"demo_{v:03d}"
        rel = f"videos/{name}.mp4"
        write_video(out / rel, frames_of(steps), fps=FPS)
        if v < spec.frame_folders:
            _write_frame_folder(out / "frames" / name, steps)
        events = [Event(s.start, s.end, s.caption) for s in steps]
        media = f"frames/{name}" if v < spec.frame_folders else rel
        target = format_events(events)
        stage2.append(ver_record(name, media, dense_prompt, target))
        corpus += [dense_prompt, target]
        for k in range(1, len(events) - 1) or [0]:
            prompt, answer, window = masked_sample(events, k, prompt=masked_prompt)
            extra = {"masked_start_end_frame_idxs": window}
            stage1.append(ver_record(f"{name}_m{k}", media, prompt, answer, **extra))
            corpus += [prompt, answer]
        for e in events:
            charades.append(f"{name} {e.start:.1f} {e.end:.1f}##{e.caption.rstrip('.')}")
            qvh.append(_qvh_record(len(qvh), name, duration, e, rng))
            corpus.append(e.caption)
    paths = {
        "stage1": out / "stage1_masked.json",
        "stage2": out / "stage2_dense.json",
        "charades": out / "charades_sta_test.txt",
        "qvhighlights": out / "highlight_val_release.jsonl",
        "tokenizer": out / "tokenizer",
        "media_root": out,
    }
    paths["stage1"].write_text(json.dumps(stage1, indent=1))
    paths["stage2"].write_text(json.dumps(stage2, indent=1))
    paths["charades"].write_text("\n".join(charades) + "\n")
    paths["qvhighlights"].write_text("\n".join(json.dumps(r) for r in qvh) + "\n")
    # The chat template's words wrap every record: weigh them so (the long
    # reference prompts would otherwise take their merges).
    chat = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    corpus += chat * (len(stage1) + len(stage2)) + ["From 12.5 to 30.0 seconds, 0123456789"]
    write_tokenizer(paths["tokenizer"], corpus)
    (out / "README.txt").write_text(
        "Synthetic TEMPURA demo data (tempura_jax.data.demo). Videos: 320x180, 8 fps, h264.\n"
        "stage1_masked.json / stage2_dense.json: VER records (media root: this folder).\n"
        "charades_sta_test.txt, highlight_val_release.jsonl: evaluation annotations.\n"
    )
    return {k: str(p) for k, p in paths.items()}


def _write_frame_folder(folder: Path, steps: list[Step]) -> None:
    """VER layout: one JPEG per second, named by its index."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for i in range(int(math.floor(steps[-1].end - 1e-9)) + 1):
        while k + 1 < len(steps) and i >= steps[k].end:
            k += 1
        Image.fromarray(render(steps[k], float(i))).save(folder / f"{i}.jpg", quality=90)


def _qvh_record(qid: int, vid: str, duration: float, e: Event, rng) -> dict:
    """QVHighlights layout: 2-second clips; relevant clips overlap the event;
    three annotators score them 2-4 (0 elsewhere, not listed)."""
    first, last = int(e.start // 2), int(math.ceil(e.end / 2) - 1)
    last = min(last, int(math.ceil(duration / 2)) - 1)
    clips = list(range(first, last + 1))
    scores = [[int(rng.integers(2, 5)) for _ in range(3)] for _ in clips]
    return {
        "qid": qid,
        "query": e.caption.rstrip("."),
        "duration": duration,
        "vid": vid,
        "relevant_clip_ids": clips,
        "saliency_scores": scores,
        "relevant_windows": [[first * 2, min((last + 1) * 2, duration)]],
    }
