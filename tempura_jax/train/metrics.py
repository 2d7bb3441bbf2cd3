"""Where step metrics go: `WORKDIR/metrics.jsonl` (one JSON object per
logged step, each step once across resumes), TensorBoard scalars and a
progress bar. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(
        self,
        workdir: Path,
        *,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        progress: bool,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        _drop_after(path, start_step)
        self._file = open(path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = int(record["step"])
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, step)
            self._tb.flush()

    def advance(self, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for obj in (self._bar, self._tb, self._file):
            if obj is not None:
                obj.close()


def _drop_after(path: Path, step: int) -> None:
    """A resumed run logs again the steps after its checkpoint: drop the
    records of those steps (and a line cut off by a kill) so that the file
    holds each step once, like TensorBoard's purge_step. Atomic rewrite."""
    if not path.exists():
        return
    keep, changed = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            stale = int(json.loads(line)["step"]) > step
        except (ValueError, KeyError, TypeError):
            stale = True
        changed |= stale
        if not stale:
            keep.append(line + "\n")
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)


def _clean(v: Any) -> Any:
    """JSON-safe scalars; a non-finite float becomes its string ("nan", "inf")."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
