"""What every batch task shares: the tile task, the task context, retries, and how failures travel.

A task pins torch's threads (the fit's floating-point result depends on them), forwards its geolift log lines and
progress to the client as Dask events, and fails with a picklable, cause-free error so the client can tell a
failure that may pass (a worker died, memory, I/O: retried) from a wrong input (never retried).
"""

from __future__ import annotations

import functools
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from geolift.errors import GeoliftError, warnings_to_log
from geolift.fuse import FusionPlan

__all__ = ["await_with_retries", "describe_failure", "is_retryable", "predict_task", "task_context",
           "with_portable_errors"]

log = logging.getLogger("geolift")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed task may succeed if run again (its worker died, memory, I/O), unlike input errors."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    if isinstance(exc, GeoliftError):
        return False
    if isinstance(exc, (KilledWorker, MemoryError, OSError, CommClosedError)):
        return True
    return isinstance(exc, RuntimeError) and "memory" in str(exc).lower()  # e.g. torch's allocator


def await_with_retries(future, resubmit: Callable[[], Any], retries: int, what: str) -> tuple[Any, int]:
    """The future's result and how many tries it took; a retryable failure is resubmitted up to ``retries``
    times (logged), any other failure, or the last one, is raised."""
    attempt = 1
    while True:
        try:
            value = future.result()
            future.release()
            return value, attempt
        except Exception as exc:
            future.release()
            if not is_retryable(exc) or attempt > retries:
                raise
            log.warning("%s failed (%s); retrying (%d of %d).", what, describe_failure(exc), attempt, retries)
            attempt += 1
            future = resubmit()


def describe_failure(exc: BaseException) -> str:
    """One line saying why a job failed, for the report."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        worker = getattr(getattr(exc, "last_worker", None), "address", "a worker")
        return f"the worker running it ({worker}) died (killed, crashed or out of memory)"
    if isinstance(exc, GeoliftError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _TaskLogForwarder(logging.Handler):
    """Send this task thread's geolift log records to the client as Dask events (tagged with the job)."""

    def __init__(self, worker, topic: str, job: str):
        super().__init__(logging.INFO)
        self.worker, self.topic, self.job = worker, topic, job
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            self.worker.log_event(self.topic, {"job": self.job, "kind": "log", "level": record.levelno,
                                               "message": self.format(record)})
        except Exception:  # noqa: BLE001 - logging must never break the task
            pass


@contextmanager
def task_context(job: str, torch_threads: int, topic: str | None) -> Iterator[Callable[[int, int, str], None] | None]:
    """Pin torch's threads, forward log lines and yield a (throttled) progress callback for one task."""
    import torch

    torch.set_num_threads(int(torch_threads))
    worker = None
    if topic:
        try:
            from distributed import get_worker

            worker = get_worker()
        except ValueError:  # not running on a Dask worker (e.g. called directly)
            worker = None
    if worker is None:
        yield None
        return
    handler = _TaskLogForwarder(worker, topic, job)
    geolift_log = logging.getLogger("geolift")
    if geolift_log.getEffectiveLevel() > logging.INFO:
        geolift_log.setLevel(logging.INFO)
    geolift_log.addHandler(handler)
    last = {"stage": "", "fraction": -1.0, "time": 0.0}

    def progress(done: int, total: int, stage: str) -> None:
        fraction = done / total if total else 1.0
        now = time.monotonic()
        if stage == last["stage"] and fraction < 1.0 and fraction - last["fraction"] < 0.05 and now - last["time"] < 2:
            return
        last.update(stage=stage, fraction=fraction, time=now)
        try:
            worker.log_event(topic, {"job": job, "kind": "progress", "stage": stage, "done": int(done),
                                     "total": int(total)})
        except Exception:  # noqa: BLE001 - progress must never break the task
            pass

    try:
        with warnings_to_log():  # a GeoliftWarning becomes a log record, forwarded to the client like the others
            yield progress
    except Exception as exc:
        if not isinstance(exc, GeoliftError):  # a bug or a system error: keep its traceback in the log
            log.warning("Unexpected %s in a task:", type(exc).__name__, exc_info=True)
        raise
    finally:
        geolift_log.removeHandler(handler)


def _portable(exc: BaseException) -> BaseException:
    """The same error without its chained causes, so it crosses to the client with its class intact.

    Dask pickles a failed task's exception together with its ``__cause__``/``__context__``; when
    one of those does not pickle (GDAL errors from rasterio, for instance) Dask falls back to a
    bare ``Exception(repr)`` and the class, which decides retry or not, is lost.
    """
    try:
        clone = type(exc)(*exc.args)
        pickle.loads(pickle.dumps(clone))
        return clone
    except Exception:  # noqa: BLE001 - any failure to pickle falls back to a plain error
        for kind in (GeoliftError, OSError, MemoryError):
            if isinstance(exc, kind):
                return kind(str(exc))
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def with_portable_errors(task: Callable) -> Callable:
    """Run a Dask task so that its failure reaches the client as a picklable, cause-free error."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside this block (no __context__)
            error = _portable(exc)
        raise error

    return run


@with_portable_errors
def predict_task(plan: FusionPlan, windows: list, torch_threads: int, job: str, qa: bool,
                  topic: str | None) -> list[tuple[Any, Any]]:
    """Dask task: predict a run of output windows of one scene with its fitted plan."""
    with task_context(job, torch_threads, topic):
        return [plan.predict_window(w, qa=qa) for w in windows]
