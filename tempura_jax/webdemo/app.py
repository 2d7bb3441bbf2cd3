"""tempura-demo: a Gradio web app over a checkpoint (default: the demo model,
offline). Pick a demo video or upload one, choose the task (dense captions,
grounding query, masked window, highlights, free question) and see the
stamped frames the model saw, its answer, and a timeline of the predicted
events against the ground truth (demo videos).

    tempura-demo [--checkpoint CKPT] [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tempura_jax.webdemo.session import DemoSession


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", help="default: the demo model under --workdir")
    p.add_argument("--workdir", type=Path, default=Path("workdir/demo"), help="demo data/model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="0: any free port (printed)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    from tempura_jax.webdemo import ui  # gradio: imported only to serve

    try:
        session = DemoSession.load(args.checkpoint, args.workdir, args.max_new_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = ui.build_demo(session)
    try:
        url = ui.launch(demo, args.host, args.port)
    except OSError as e:  # the port is taken, the host cannot be bound
        print(f"error: {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"tempura-demo: {url}", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
