"""Progress display for long commands: rich bars for people, plain lines for programs.

The library reports progress as ``progress(done, total, stage)`` calls; this module turns
them into either a terminal progress bar per stage, or (``--progress plain``) lines
``geolift: progress <percent>% <stage>`` on stderr that another program (the QGIS plugin)
can parse. Percent is of the whole job, weighted by stage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Share of the whole job each stage stands for: (start %, end %).
STAGE_SPAN = {"read": (0.0, 5.0), "train": (5.0, 55.0), "write": (55.0, 100.0)}

Progress = Callable[[int, int, str], None]


def overall_percent(done: int, total: int, stage: str) -> float:
    start, end = STAGE_SPAN.get(stage, (0.0, 100.0))
    return start + (end - start) * (done / total if total else 1.0)


@contextmanager
def progress_reporter(mode: str) -> Iterator[Progress | None]:
    """Yield a progress callback for ``mode`` (``bar``, ``plain`` or ``none``)."""
    if mode == "none":
        yield None
    elif mode == "plain":
        yield _plain_reporter()
    else:
        with _bar_reporter() as callback:
            yield callback


def _plain_reporter() -> Progress:
    last = {"text": ""}

    def report(done: int, total: int, stage: str) -> None:
        text = f"geolift: progress {overall_percent(done, total, stage):.1f}% {stage}"
        if text != last["text"]:
            last["text"] = text
            print(text, file=sys.stderr, flush=True)

    return report


@contextmanager
def _bar_reporter() -> Iterator[Progress]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    labels = {"read": "Reading and aligning", "train": "Training", "write": "Predicting and writing"}
    with RichProgress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=False, redirect_stderr=False,
    ) as bars:
        tasks: dict[str, int] = {}

        def report(done: int, total: int, stage: str) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(labels.get(stage, stage), total=total)
            bars.update(tasks[stage], completed=done, total=total)

        yield report
