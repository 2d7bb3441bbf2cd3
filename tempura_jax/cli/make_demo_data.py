"""Write the offline demo data set: synthetic shape videos with exact events,
VER stage-1/stage-2 JSON, Charades-STA and QVHighlights annotation files, and
a tiny tokenizer matching the `tiny` model.

    python launch/make_demo_data.py --out data/demo
"""

from __future__ import annotations

import argparse
import json
import sys

from tempura_jax.data.demo import DemoSpec, make_demo_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--videos", type=int, default=DemoSpec.num_videos, help="number of videos")
    p.add_argument("--min-seconds", type=float, default=DemoSpec.min_seconds)
    p.add_argument("--max-seconds", type=float, default=DemoSpec.max_seconds)
    p.add_argument(
        "--frame-folders",
        type=int,
        default=DemoSpec.frame_folders,
        help="how many videos are stored as VER 1-FPS frame folders too",
    )
    p.add_argument("--seed", type=int, default=DemoSpec.seed)
    a = p.parse_args(argv)
    if not 0 < a.min_seconds <= a.max_seconds:
        p.error("need 0 < --min-seconds <= --max-seconds")
    spec = DemoSpec(a.videos, a.min_seconds, a.max_seconds, a.frame_folders, a.seed)
    print(json.dumps(make_demo_data(a.out, spec), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
