"""What every benchmark reports: named measurements, ratios against a goal, printed as one table.

Absolute times differ between machines (and between runs on a shared one), so each goal is a
*ratio of two timings taken in the same run*, next to the absolute figures it came from.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table.

    ``value`` is in ``unit``; ``goal`` (same unit) with ``higher_is_better`` says what passes.
    ``detail`` carries the absolute figures a ratio came from (e.g. "raw 4.1 ms, dualis 4.2 ms").
    """

    section: str
    name: str
    value: float
    unit: str
    goal: float | None = None
    higher_is_better: bool = False
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        ok = self.value >= self.goal if self.higher_is_better else self.value <= self.goal
        return "ok" if ok else "MISSED"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "verdict": self.verdict}


def best_time(fn: Callable[[], object], repeat: int = 5, min_seconds: float = 0.2) -> float:
    """Best seconds per call over ``repeat`` rounds, each round at least ``min_seconds`` long.

    The minimum, not the mean: on a shared machine noise only ever adds time.
    """
    fn()  # warm-up: imports, allocator, BLAS threads
    best = float("inf")
    for _ in range(repeat):
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def machine() -> str:
    """One line describing where the numbers came from."""
    import os

    blas = "unknown BLAS"
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"]  # type: ignore[index]
    except Exception:  # older numpy: the table just says "unknown BLAS"
        pass
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__} ({blas})"
    )


def table(rows: list[Row]) -> str:
    """A Markdown table of ``rows``."""
    lines = [
        "| section | measurement | value | goal | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        goal = ""
        if row.goal is not None:
            goal = f"{'≥' if row.higher_is_better else '≤'} {row.goal:g} {row.unit}"
        lines.append(
            f"| {row.section} | {row.name} | {row.value:.3g} {row.unit} | {goal} | "
            f"{row.verdict} | {row.detail} |"
        )
    return "\n".join(lines)
