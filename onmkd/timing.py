"""Where a job's wall time goes: named phases, timed with a monotonic clock, written atomically.

A :class:`Phases` is passed (never read from afar) to the code that does the work; each piece of
work runs under ``with phases("trial 3/train/steps"):``. Names are paths: the part before the first
``/`` is a top-level phase (``setup``, ``trial 3``, ``final``, ``report``), and the top-level
phases of one job do not overlap, so their sum plus ``unaccounted`` is the job's wall time.
A phase opened inside another is named under it (``trial 3`` → ``trial 3/train/steps``), so
code that times its own work (the trainer) needs no prefix; nested phases are not added twice.

``Phases.summary()`` gives a flat ``{name: seconds}``; :func:`by_kind` folds the trials into one
row per kind of work (training steps, dev evaluation, checkpoint writes, …) for the report's table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["Phases", "by_kind"]


class Phases:
    """Accumulated wall seconds per phase name, and the job's own wall clock since creation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.started_unix = time.time()
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._open: list[str] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as ``name``; inside another phase, ``name`` is taken relative to it."""
        full = f"{self._open[-1]}/{name}" if self._open else name
        self._open.append(full)
        t = self.clock()
        try:
            yield
        finally:
            self._open.pop()
            self.add(full, self.clock() - t)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.counts[name] += 1

    def current(self) -> str:
        """The full name of the innermost open phase ("" outside any)."""
        return self._open[-1] if self._open else ""

    def wall(self) -> float:
        return self.clock() - self.started

    def summary(self) -> dict:
        """``{"wall_s", "phases": {name: s}, "top": {top-level: s}, "unaccounted_s"}``."""
        top: dict[str, float] = defaultdict(float)
        for name, s in self.seconds.items():
            if "/" not in name:
                top[name] += s
        wall = self.wall()
        return {"wall_s": wall, "started_unix": self.started_unix, "phases": dict(sorted(self.seconds.items())), "counts": dict(self.counts),
                "top": dict(top), "unaccounted_s": wall - sum(top.values())}


def by_kind(summary: dict, others: list[dict] = ()) -> list[tuple[str, float, int]]:
    """Rows ``(kind, seconds, count)`` for a table: the top-level phases as they are; each trial's
    phases summed over the trials (``trials/steps``, ``trials/dev``, … over this worker's trials and
    those of ``others``, the summaries of workers that ran beside it); the final step's runs and
    encoders one row each, with their ``train`` and ``test`` parts; then ``unaccounted``."""
    rows: dict[str, list] = {}

    def add(key: str, s: float, c: int) -> None:
        row = rows.setdefault(key, [0.0, 0])
        row[0] += s
        row[1] += c

    for i, summ in enumerate([summary, *others]):
        for name, s in summ["phases"].items():
            parts = name.split("/")
            c = summ["counts"].get(name, 1)
            if parts[0] == "trials" and len(parts) > 1 and parts[1].startswith("trial "):
                add("trials/" + ("/".join(parts[2:]) or "all trials"), s, c if len(parts) > 2 else 1)
            elif i == 0 and len(parts) <= (3 if parts[0] == "final" else 1):
                add(name, s, c)
    order = {"setup": 0, "trials": 1, "final": 2, "report": 3}
    out = sorted(((k, v[0], v[1]) for k, v in rows.items()), key=lambda r: (order.get(r[0].split("/")[0], 4), r[0]))
    out.append(("unaccounted", summary["unaccounted_s"], 1))
    return out


def read_summary(path: Path) -> dict | None:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
