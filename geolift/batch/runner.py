"""The client side of a batch: decides which jobs to run, submits one job task each, retries, and reports.

The client never touches a pixel: each job task (:mod:`geolift.batch.writer`) trains, predicts and writes its
outputs on the workers. Each active job has a client thread that only waits for its task's small result, so a few
threads coordinate thousands of jobs. See :mod:`geolift.batch` for the design.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geolift.batch.jobs import SPLIT_PIXELS_PER_TASK, BatchJob, BatchSettings, JobEvent
from geolift.batch.report import BatchReport, JobResult, job_result, pair_check_text
from geolift.batch.resume import is_complete, job_fingerprint, job_hash, read_sidecar
from geolift.batch.tasks import describe_failure, is_retryable
from geolift.batch.writer import JobOutcome, job_task, token_for
from geolift.errors import BatchError, GeoliftError

__all__ = ["run_batch"]

WHOLE_SCENE = 2**62  # pixels per task that no scene reaches

log = logging.getLogger("geolift")


class _Runner:
    """Runs jobs on a Dask client: one client thread per active job, tasks on the workers."""

    def __init__(self, client, settings: BatchSettings, emit: Callable[[JobEvent], None], topic: str):
        self.client = client
        self.settings = settings
        self.emit = emit
        self.topic = topic
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

    def _await_job(self, job: BatchJob, submit: Callable[[int], Any]) -> JobOutcome:
        """The job task's outcome; a retryable failure (its worker died, memory, I/O) is resubmitted up to
        ``retries`` times; the last failure, or any other, is raised as :class:`_JobFailedError`."""
        attempt = 1
        while True:
            future = self._track(submit(attempt))
            try:
                return future.result()
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = exc
            finally:
                self._forget([future])
                future.release()
            if self.stopping.is_set() or not is_retryable(failure) or attempt > self.settings.retries:
                raise _JobFailedError(failure, attempt)
            reason = describe_failure(failure)
            log.warning("%s: job task failed (%s); retrying (%d of %d).", job.name, reason, attempt,
                        self.settings.retries)
            self.emit(JobEvent(job.name, "retry", attempt, self.settings.retries, reason))
            attempt += 1

    # -- one job -------------------------------------------------------------------------------
    def run(self, job: BatchJob, fingerprint: dict[str, Any], digest: str) -> JobResult:
        started = time.perf_counter()
        try:
            if self.stopping.is_set():
                raise _InterruptedError()
            log.info("%s: started (%s + %s).", job.name, Path(job.hsi).name, ", ".join(Path(m).name for m in job.msi))
            self.emit(JobEvent(job.name, "read", 0, 1))
            token = token_for(job, digest)

            def submit(attempt: int):
                return self.client.submit(
                    job_task, job, self.settings, fingerprint, digest, self.topic, attempt,
                    key=f"geolift_job-{token}-{uuid.uuid4().hex[:8]}", priority=0, pure=False)

            outcome = self._await_job(job, submit)
            seconds = time.perf_counter() - started
            log.info("%s %s: done in %.1f s -> %s", self._count(), job.name, seconds, job.output)
            self.emit(JobEvent(job.name, "done", 1, 1))
            return job_result(job, "done", seconds=seconds, attempts=outcome.attempts, pair_check=outcome.pair_check)
        except Exception as exc:
            seconds = time.perf_counter() - started
            attempts = exc.attempts if isinstance(exc, _JobFailedError) else 1
            exc = exc.cause if isinstance(exc, _JobFailedError) else exc
            reason = "interrupted" if self.stopping.is_set() else describe_failure(exc)
            if not isinstance(exc, (GeoliftError, _InterruptedError)) and not self.stopping.is_set():
                log.debug("%s failed", job.name, exc_info=True)
            log.error("%s %s: failed after %d attempt(s): %s", self._count(), job.name, attempts, reason)
            self.emit(JobEvent(job.name, "failed", 0, 0, reason))
            return job_result(job, "failed", reason, seconds, attempts)


class _InterruptedError(Exception):
    pass


class _JobFailedError(Exception):
    """A job task's last failure and how many attempts the job had."""

    def __init__(self, cause: BaseException, attempts: int):
        super().__init__(str(cause))
        self.cause, self.attempts = cause, attempts


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
    if settings.pixels_per_task is None:
        whole = len(todo) >= threads  # every worker thread has a job of its own: no scene needs splitting
        settings = replace(settings, pixels_per_task=WHOLE_SCENE if whole else SPLIT_PIXELS_PER_TASK)
    runner = _Runner(client, settings, emit, topic)
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
