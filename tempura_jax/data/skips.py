"""Skipped records: logged one JSON line each, counted by reason, and fatal
only past a budget (a fraction of the records this process reads). A record
that fails again in a later epoch is counted once."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from tempura_jax.data.records import Problem


class DataError(RuntimeError):
    pass


class SkipLog:
    def __init__(self, path: str | Path | None, max_fraction: float, total: int):
        self.path = Path(path) if path else None
        self.max_fraction, self.total = max_fraction, total
        self.counts: collections.Counter[str] = collections.Counter()
        self.sources: set[str] = set()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def add(self, problem: Problem, fatal_check: bool = True) -> bool:
        """Count and log a problem; False if this record was already counted."""
        if problem.source in self.sources:
            return False
        self.sources.add(problem.source)
        self.counts[problem.reason] += 1
        if self.path:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(dataclass_dict(problem)) + "\n")
        if fatal_check:
            self.check()
        return True

    def check(self) -> None:
        budget = self.max_fraction * max(self.total, 1)
        if self.skipped > budget:
            raise DataError(
                f"{self.skipped} records skipped, more than max_skip_fraction="
                f"{self.max_fraction} of {self.total}: {self.summary()}"
                + (f" (details in {self.path})" if self.path else "")
            )

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"

    def state(self) -> dict:
        return {"counts": dict(self.counts), "sources": sorted(self.sources)}

    def restore(self, state: dict) -> None:
        self.counts = collections.Counter({k: int(v) for k, v in state["counts"].items()})
        self.sources = set(state["sources"])


def dataclass_dict(p: Problem) -> dict[str, str]:
    return {"source": p.source, "reason": p.reason, "detail": p.detail}
