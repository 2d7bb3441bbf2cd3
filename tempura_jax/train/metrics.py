"""Where step metrics go: `WORKDIR/metrics.jsonl` (one JSON object per
logged step, appended across resumes), TensorBoard scalars and a progress
bar. Only process 0 writes."""

from __future__ import annotations

import json
import math
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
        self._file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
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


def _clean(v: Any) -> Any:
    """JSON-safe scalars; a non-finite float becomes its string ("nan", "inf")."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
