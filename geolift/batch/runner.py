"""The client side of a batch: runs every job that is not up to date on a Dask client and reports each one.

Each job has a thread on the client that submits its prepare task, then its tile tasks a few ahead of the writer,
and streams the blocks in window order through :func:`geolift.fuse.write_fusion` (the code path of
``geolift fuse``, so the output is identical) into the atomic writer. See :mod:`geolift.batch` for the design.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geolift.batch.jobs import BatchJob, BatchSettings, JobEvent
from geolift.batch.report import BatchReport, JobResult, job_result, pair_check_text
from geolift.batch.resume import (
    SIDECAR_FORMAT,
    is_complete,
    job_fingerprint,
    job_hash,
    read_sidecar,
    remove_leftovers,
    sidecar_path,
    write_json_atomic,
)
from geolift.batch.tasks import describe_failure, is_retryable, predict_task, prepare_task
from geolift.errors import BatchError, GeoliftError
from geolift.fuse import write_fusion
from geolift.io import check_output_path, is_remote

__all__ = ["run_batch"]

log = logging.getLogger("geolift")


class _Tries:
    """The most tries any one task of a job needed (what the report calls its attempts)."""

    def __init__(self) -> None:
        self.most = 0

    def record(self, tries: int) -> None:
        self.most = max(self.most, tries)


def _window_key(window) -> tuple[int, int, int, int]:
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


class _Runner:
    """Runs jobs on a Dask client: one client thread per active job, tasks on the workers."""

    def __init__(self, client, settings: BatchSettings, emit: Callable[[JobEvent], None], topic: str, threads: int):
        self.client = client
        self.settings = settings
        self.emit = emit
        self.topic = topic
        self.ahead = settings.tasks_ahead or max(2, threads)
        self.stopping = threading.Event()
        self._futures_lock = threading.Lock()
        self._live: set = set()
        self.finished, self.total = 0, 0  # for the "[k/n]" in log lines; set by run_batch

    def _count(self) -> str:
        with self._futures_lock:
            self.finished += 1
            return f"[{self.finished}/{self.total}]"

    # -- futures bookkeeping (so an interrupt can cancel everything) --------------------------
    def _track(self, future):
        with self._futures_lock:
            self._live.add(future)
        return future

    def _forget(self, futures) -> None:
        with self._futures_lock:
            for f in futures:
                self._live.discard(f)

    def cancel_all(self) -> None:
        self.stopping.set()
        with self._futures_lock:
            live = list(self._live)
        if live:
            try:
                self.client.cancel(live)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass

    def _await(self, future, resubmit: Callable[[], Any], tries: _Tries, job: BatchJob, what: str):
        """The future's result; retryable failures are resubmitted up to ``retries`` times."""
        attempt = 1
        while True:
            try:
                value = future.result()
                tries.record(attempt)
                return future, value
            except Exception as exc:
                tries.record(attempt)
                if self.stopping.is_set() or not is_retryable(exc) or attempt > self.settings.retries:
                    self._forget([future])
                    future.release()
                    raise
                reason = describe_failure(exc)
                log.warning("%s: %s failed (%s); retrying (%d of %d).", job.name, what, reason, attempt,
                            self.settings.retries)
                self.emit(JobEvent(job.name, "retry", attempt, self.settings.retries, reason))
                self._forget([future])
                future.release()
                attempt += 1
                future = self._track(resubmit())

    # -- one job -------------------------------------------------------------------------------
    def run(self, job: BatchJob, fingerprint: dict[str, Any], digest: str) -> JobResult:
        started = time.perf_counter()
        tries = _Tries()
        futures: list = []
        try:
            if self.stopping.is_set():
                raise _InterruptedError()
            output = Path(job.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            local_inputs = [i for i in job.inputs if not is_remote(i)]
            check_output_path(output, overwrite=True, inputs=local_inputs)
            remove_leftovers(output)
            qa_path = None
            if self.settings.qa:
                qa_path = check_output_path(job.qa_output, overwrite=True, inputs=[*local_inputs, output])
                remove_leftovers(qa_path)
            log.info("%s: started (%s + %s).", job.name, Path(job.hsi).name, ", ".join(Path(m).name for m in job.msi))
            self.emit(JobEvent(job.name, "read", 0, 1))

            token = f"{re.sub(r'[^A-Za-z0-9_]+', '_', job.name)[:40]}-{digest[:8]}"

            def submit_prepare():
                return self.client.submit(
                    prepare_task, job, self.settings.torch_threads, self.settings.pixels_per_task, self.topic,
                    self.settings.qa,
                    key=f"geolift_prepare-{token}-{uuid.uuid4().hex[:8]}", priority=0, pure=False)

            plan_future, prepared = self._await(self._track(submit_prepare()), submit_prepare, tries, job, "training")
            plan = prepared.plan
            if prepared.blocks is None:
                futures.append(plan_future)  # tile tasks need the plan on the cluster
            else:
                self._forget([plan_future])
                plan_future.release()
            windows = plan.output_windows()
            if prepared.blocks is not None:
                by_window = dict(zip(map(_window_key, windows), prepared.blocks))
                fetch = lambda window: by_window.pop(_window_key(window))  # noqa: E731
                feed = None
            else:
                feed = _TileFeed(self, job, token, plan_future, windows, tries)
                fetch = feed.block
                log.info("%s: %d output windows in %d tile tasks.", job.name, len(windows), len(feed.groups))
            try:
                write_fusion(plan, output,
                             progress=lambda d, t, s: self.emit(JobEvent(job.name, "write", d, t)),
                             inputs=job.inputs, blocks=fetch, qa_path=qa_path)
            finally:
                if feed is not None:
                    feed.close()
            seconds = time.perf_counter() - started
            write_json_atomic(sidecar_path(output), {
                "format": SIDECAR_FORMAT, "job": job.name, "hash": digest, "fingerprint": fingerprint,
                "finished_utc": _utc_now(), "seconds": round(seconds, 3), "attempts": max(tries.most, 1),
                "pair_check": plan.report.pair_check,
            })
            log.info("%s %s: done in %.1f s -> %s", self._count(), job.name, seconds, output)
            self.emit(JobEvent(job.name, "done", 1, 1))
            return job_result(job, "done", seconds=seconds, attempts=max(tries.most, 1),
                              pair_check=pair_check_text(plan.report.pair_check))
        except Exception as exc:
            seconds = time.perf_counter() - started
            reason = "interrupted" if self.stopping.is_set() else describe_failure(exc)
            if not isinstance(exc, (GeoliftError, _InterruptedError)) and not self.stopping.is_set():
                log.debug("%s failed", job.name, exc_info=True)
            log.error("%s %s: failed after %d attempt(s): %s", self._count(), job.name, max(tries.most, 1), reason)
            self.emit(JobEvent(job.name, "failed", 0, 0, reason))
            return job_result(job, "failed", reason, seconds, max(tries.most, 1))
        finally:
            self._forget(futures)
            for f in futures:
                f.release()


class _InterruptedError(Exception):
    pass


class _TileFeed:
    """Hands one job's output blocks to the writer in window order, keeping a few tile tasks ahead."""

    def __init__(self, runner: _Runner, job: BatchJob, token: str, plan_future, windows: list, tries: _Tries):
        self.runner, self.job, self.token, self.plan_future, self.tries = runner, job, token, plan_future, tries
        tile = job.options.tile_size
        per_task = max(1, runner.settings.pixels_per_task // (tile * tile))
        self.groups = [windows[i:i + per_task] for i in range(0, len(windows), per_task)]
        self.where = {_window_key(w): (g, k) for g, group in enumerate(self.groups) for k, w in enumerate(group)}
        self.futures: dict[int, Any] = {}
        self.submitted = 0
        self.current: tuple[int, list] | None = None

    def _submit(self, g: int):
        runner = self.runner
        return runner._track(runner.client.submit(
            predict_task, self.plan_future, self.groups[g], runner.settings.torch_threads, self.job.name,
            runner.settings.qa,
            runner.topic, key=f"geolift_tiles-{self.token}-{g}-{uuid.uuid4().hex[:8]}", priority=1, pure=False))

    def _fill(self, upto: int) -> None:
        while self.submitted < min(upto, len(self.groups)):
            self.futures[self.submitted] = self._submit(self.submitted)
            self.submitted += 1

    def block(self, window):
        g, k = self.where[_window_key(window)]
        if self.current is None or self.current[0] != g:
            self._fill(g + 1 + self.runner.ahead)
            future = self.futures.pop(g)
            future, blocks = self.runner._await(future, lambda: self._submit(g), self.tries, self.job,
                                                f"tile task {g + 1}/{len(self.groups)}")
            self.runner._forget([future])
            future.release()
            self.current = (g, blocks)
        return self.current[1][k]

    def close(self) -> None:
        """Cancel tile tasks the writer will not consume (the job failed or was interrupted)."""
        left = list(self.futures.values())
        self.futures.clear()
        self.runner._forget(left)
        if left:
            try:
                self.runner.client.cancel(left)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_batch(
    jobs: Sequence[BatchJob],
    client,
    settings: BatchSettings | None = None,
    progress: Callable[[JobEvent], None] | None = None,
) -> BatchReport:
    """Run every job not already done on the Dask ``client``; returns the report (never raises for a job).

    Completed jobs (output present, sidecar hash equal) are skipped unless ``settings.force``.
    ``progress`` receives a :class:`JobEvent` per stage change (from several threads). On Ctrl-C the
    running tasks are cancelled, unfinished jobs are reported as failed ("interrupted") and the
    report has ``interrupted=True``.
    """
    settings = settings or BatchSettings()
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise BatchError(f"Job names must be unique; repeated: {', '.join(repeated)}.")
    started, started_utc = time.perf_counter(), _utc_now()

    def emit(event: JobEvent) -> None:
        if progress is not None:
            try:
                progress(event)
            except Exception:  # a display problem must not fail a job
                log.debug("progress callback failed", exc_info=True)

    results: dict[str, JobResult] = {}
    todo: list[tuple[BatchJob, dict, str]] = []
    for job in jobs:
        fingerprint = job_fingerprint(job, settings.torch_threads, settings.qa)
        digest = job_hash(fingerprint)
        if not settings.force and is_complete(job, digest, settings.qa):
            check = (read_sidecar(job.output) or {}).get("pair_check") or {}
            results[job.name] = job_result(job, "skipped", "output is up to date", pair_check=pair_check_text(check))
            emit(JobEvent(job.name, "skipped", 1, 1))
        else:
            todo.append((job, fingerprint, digest))
            emit(JobEvent(job.name, "queued"))
    log.info("Batch: %d job(s), %d up to date, %d to run.", len(jobs), len(jobs) - len(todo), len(todo))

    workers = client.scheduler_info().get("workers", {})
    threads = sum(w.get("nthreads", 1) for w in workers.values()) or 1
    scheduler = getattr(client.scheduler, "address", "") if client.scheduler is not None else ""
    topic = f"geolift-batch-{uuid.uuid4().hex}"
    runner = _Runner(client, settings, emit, topic, threads)
    runner.finished, runner.total = len(jobs) - len(todo), len(jobs)
    interrupted = False

    def on_event(event) -> None:
        _, msg = event
        if not isinstance(msg, dict) or runner.stopping.is_set():
            return
        if msg.get("kind") == "log":
            log.log(int(msg.get("level", logging.INFO)), "%s: %s", msg.get("job"), msg.get("message"))
        elif msg.get("kind") == "progress":
            emit(JobEvent(str(msg.get("job")), str(msg.get("stage")), int(msg.get("done", 0)),
                          int(msg.get("total", 0))))

    if todo:
        client.subscribe_topic(topic, on_event)
        max_active = settings.max_active_jobs or 2 * threads + 1
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_active, len(todo))), thread_name_prefix="geolift-job")
        pending = {pool.submit(runner.run, job, fp, digest): job for job, fp, digest in todo}
        try:
            for done in as_completed(pending):
                result = done.result()
                results[result.job] = result
        except KeyboardInterrupt:
            interrupted = True
            log.warning("Interrupted: cancelling the running tasks; finished outputs are kept.")
            runner.cancel_all()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            for future, job in pending.items():
                if job.name not in results:
                    finished = future.done() and not future.cancelled() and future.exception() is None
                    results[job.name] = future.result() if finished else job_result(job, "failed", "interrupted")
        finally:
            pool.shutdown(wait=True)
            try:
                client.unsubscribe_topic(topic)
            except Exception:  # noqa: BLE001 - the scheduler may be gone already
                pass

    report = BatchReport(
        results=[results[j.name] for j in jobs], started_utc=started_utc, seconds=time.perf_counter() - started,
        scheduler=str(scheduler), workers=len(workers), interrupted=interrupted,
    )
    log.info("Batch finished in %.1f s: %d done, %d skipped, %d failed.", report.seconds, report.count("done"),
             report.count("skipped"), report.count("failed"))
    return report
