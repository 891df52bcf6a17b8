"""Benchmarks side by side: runs of two modes alternated (so that whatever drifts on the machine meanwhile falls on
both alike), and a table of each measured field's medians and their ratio. Used by the scripts of this folder."""

from __future__ import annotations

import signal
import statistics
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

Measured = TypeVar("Measured")


def alternate(
    repeat: int, measure: Callable[[bool], Measured], describe: Callable[[bool, Measured], str]
) -> tuple[dict[bool, list[Measured]], list[str]]:
    """`repeat` runs of each mode, alternating (True, False, True, ...), so that whatever drifts on the machine
    meanwhile falls on both alike; each run described as a line (also to stderr, as it comes), and the runs by mode."""
    # On SIGTERM unwind normally, so every namespace and process is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runs: dict[bool, list[Measured]] = {True: [], False: []}
    raws = []
    for attempt in range(1, repeat + 1):
        for mode in (True, False):
            run = measure(mode)
            runs[mode].append(run)
            raws.append(f"run {attempt} {describe(mode, run)}")
            print(raws[-1], file=sys.stderr, flush=True)
    return runs, raws


def medians_table(runs: Mapping[bool, list[Any]], header: str, labels: Mapping[str, str]) -> None:
    """A Markdown table: per field of the runs (labelled), the median of each mode and their ratio."""

    def median(mode: bool, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs[mode]))

    print(f"{header}\n|---|---|---|---|")
    for field, label in labels.items():
        first, second = median(True, field), median(False, field)
        print(f"| {label} | {first:.1f} | {second:.1f} | {first / second:.2f}x |")
