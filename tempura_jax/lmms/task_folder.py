"""Write an lmms-eval task folder for TEMPURA's benchmarks over local files.

    tempura-lmms-tasks workdir/lmms_tasks --prompts tempura_paper \\
        --charades charades_sta_test.txt --charades-videos Charades_v1_480 \\
        --qvhighlights highlight_val_release.jsonl --qvhighlights-videos qvh/videos \\
        --dvc dense.json --dvc-media-root media
    lmms-eval --model tempura_jax --model_args checkpoint=CKPT --include_path workdir/lmms_tasks \\
        --tasks tempura_charades_sta_tempura_paper,tempura_qvhighlights_tempura_paper,tempura_dvc

Each benchmark's annotation file is read by `tempura_jax.eval.benchmarks` (the
cases `launch/eval.py` runs) into `data/<task>.jsonl`, and `<task>.yaml`
includes the shipped template (`tasks/_<bench>_template_yaml`: prompts,
parsing, metrics). The prompt protocol is part of the task name
(`_tempura_paper`, `_tempura_paper_ft`; none for ours), so every number in
lmms-eval's results says which prompts produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tempura_jax.eval import benchmarks
from tempura_jax.inference import tasks

TASK_DIR = Path(__file__).resolve().parent / "tasks"
# benchmark -> lmms-eval task name (before the protocol suffix)
TASK_NAMES = {
    "charades": "tempura_charades_sta",
    "qvhighlights": "tempura_qvhighlights",
    "dvc": "tempura_dvc",
}


def template(bench: str) -> Path:
    return TASK_DIR / f"_{bench}_template_yaml"


def task_name(bench: str, prompts: str = "ours") -> str:
    """DVC has one prompt in every protocol, so its name never changes."""
    if prompts == "ours" or bench == "dvc":
        return TASK_NAMES[bench]
    return f"{TASK_NAMES[bench]}_{prompts}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_task(
    out: Path, bench_name: str, annotations: Path, videos: Path, ext: str, prompts: str
) -> str:
    """Docs and task file of one benchmark; returns the task name."""
    bench = benchmarks.get(bench_name)
    tasks.for_protocol(bench.task, prompts)  # an unknown protocol fails before any writing
    annotations, videos = annotations.resolve(), videos.resolve()
    cases = benchmarks.with_protocol(bench.cases(annotations, videos, ext), prompts)
    if not cases:
        raise ValueError(f"{annotations}: no queries")
    name = task_name(bench_name, prompts)
    docs = out / "data" / f"{name}.jsonl"
    rows = [
        {
            "id": c.id,
            "video": str(Path(c.video).absolute()),
            "query": c.query,
            "clip": list(c.clip) if c.clip else None,
            "bench": bench.name,
            "task": c.task,
            "annotations": str(annotations),
            "videos": str(videos),
        }
        for c in cases
    ]
    _write(docs, "".join(json.dumps(r) + "\n" for r in rows))
    budget = benchmarks.max_new_tokens(bench, prompts)
    _write(
        out / f"{name}.yaml",
        f"# written by tempura-lmms-tasks from {annotations} (prompts: {prompts})\n"
        f"include: {json.dumps(str(template(bench_name)))}\n"
        f"task: {name}\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(docs.resolve()))}\n"
        "generation_kwargs:\n"
        f"  max_new_tokens: {budget}\n"
        "  until: []\n"
        "  do_sample: false\n"
        "  temperature: 0\n",
    )
    return name


def write_task_folder(
    out: str | Path,
    *,
    charades: tuple[Path, Path] | None = None,
    qvhighlights: tuple[Path, Path] | None = None,
    dvc: tuple[Path, Path] | None = None,
    ext: str = ".mp4",
    prompts: str = "ours",
) -> list[str]:
    """Task files for the benchmarks given as (annotation file, video folder);
    returns their task names."""
    given = {"charades": charades, "qvhighlights": qvhighlights, "dvc": dvc}
    return [
        write_task(Path(out), bench, Path(ann), Path(videos), ext, prompts)
        for bench, (ann, videos) in ((b, g) for b, g in given.items() if g is not None)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path, help="the folder to pass as lmms-eval's --include_path")
    p.add_argument("--charades", type=Path, help="charades_sta_test.txt")
    p.add_argument("--charades-videos", type=Path, help="default: the annotation's folder")
    p.add_argument("--qvhighlights", type=Path, help="highlight_val_release.jsonl")
    p.add_argument("--qvhighlights-videos", type=Path, help="default: the annotation's folder")
    p.add_argument("--dvc", type=Path, help="VER JSON dense-caption records")
    p.add_argument("--dvc-media-root", type=Path, help="default: the annotation's folder")
    p.add_argument("--ext", default=".mp4", help="video suffix after the id (charades, qvh)")
    p.add_argument("--prompts", default="ours", choices=tuple(tasks.PROTOCOLS))
    args = p.parse_args(argv)

    def pair(ann: Path | None, videos: Path | None):
        return None if ann is None else (ann, videos or ann.parent)

    given = dict(
        charades=pair(args.charades, args.charades_videos),
        qvhighlights=pair(args.qvhighlights, args.qvhighlights_videos),
        dvc=pair(args.dvc, args.dvc_media_root),
    )
    if not any(given.values()):
        p.error("give at least one of --charades, --qvhighlights, --dvc")
    try:
        names = write_task_folder(args.out, **given, ext=args.ext, prompts=args.prompts)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"--include_path {args.out} --tasks {','.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
