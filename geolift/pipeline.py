"""Compute ahead while the caller consumes: ordered results from worker threads, with bounded look-ahead."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["pipelined"]


def pipelined(func: Callable[[Any], Any], items: Iterable[Any], depth: int = 1,
              workers: int = 1) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, func(item))`` in order while ``workers`` threads compute the results ahead.

    No item is started more than ``workers + depth`` places ahead of the one being consumed, so at most
    ``workers + depth + 1`` results are alive. An exception in ``func`` is raised here, in the consumer, once
    the items before it have been yielded; closing the generator early stops the workers after their
    current item. ``workers=0`` computes each result on the consumer's thread when it is asked for: a job
    whose budget is one core (a batch task on a one-thread worker) must not run a second thread.
    """
    if int(workers) < 1:
        return ((item, func(item)) for item in items)
    return _pipelined(func, items, depth, workers)


def _pipelined(func: Callable[[Any], Any], items: Iterable[Any], depth: int, workers: int) -> Iterator[tuple[Any, Any]]:
    source = iter(items)
    cond = threading.Condition()
    results: dict[int, tuple[Any, Any, BaseException | None]] = {}
    state = {"started": 0, "consumed": 0, "running": max(1, int(workers)), "stop": False}
    ahead = max(1, int(workers)) + max(0, int(depth))

    def work() -> None:
        try:
            while True:
                with cond:
                    while not state["stop"] and state["started"] >= state["consumed"] + ahead:
                        cond.wait()
                    if state["stop"]:
                        return
                    try:
                        item = next(source)
                    except StopIteration:
                        return
                    index = state["started"]
                    state["started"] += 1
                try:
                    outcome = (item, func(item), None)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer and re-raised there
                    outcome = (item, None, exc)
                with cond:
                    results[index] = outcome
                    cond.notify_all()
                if outcome[2] is not None:
                    return
        finally:
            with cond:
                state["running"] -= 1
                cond.notify_all()

    threads = [threading.Thread(target=work, name="geolift-predict", daemon=True) for _ in range(state["running"])]
    for thread in threads:
        thread.start()
    try:
        index = 0
        while True:
            with cond:
                while index not in results and not (state["running"] == 0 and index >= state["started"]):
                    cond.wait()
                if index not in results:
                    return
                item, value, error = results.pop(index)
                state["consumed"] = index + 1
                cond.notify_all()
            if error is not None:
                raise error
            yield item, value
            del value
            index += 1
    finally:
        with cond:
            state["stop"] = True
            results.clear()
            cond.notify_all()
        for thread in threads:
            thread.join()
