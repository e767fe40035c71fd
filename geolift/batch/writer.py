"""The worker side of one job: train, predict (fanning a large scene out to tile tasks), and write everything.

One ``job_task`` per job runs on a worker and writes the job's output, QA layer, STAC Item and sidecar to the
output location, which the workers must see (a shared file system). The client only decides what to run, retries
and reports: no output pixel crosses to it, so it cannot cap the cluster's throughput (issue 17, docs/batch.md).

Writing stays atomic from a reader's point of view: each file is written under a hidden temporary name beside the
final one and renamed into place complete (:class:`geolift.io.HSIWriter`), and the sidecar, which the resume check
trusts, comes last. A worker killed mid-write leaves only a hidden temporary file, which the next attempt removes.

A scene larger than ``BatchSettings.pixels_per_task`` output pixels is cut into tile tasks: the job task secedes
from its worker's thread pool (``worker_client``), submits the tile tasks a few ahead of its writer and writes their
blocks in window order, so memory stays bounded (a few tiles per job) and the tiles of one scene are predicted on
every worker while its writer compresses. Partial files assembled at the end would compress every pixel twice;
one writer per scene fed by tile tasks compresses once, and many scenes give many writers.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from geolift.batch.jobs import BatchJob, BatchSettings
from geolift.batch.report import pair_check_text
from geolift.batch.resume import SIDECAR_FORMAT, remove_leftovers, sidecar_path, write_json_atomic
from geolift.batch.tasks import await_with_retries, predict_task, task_context, with_portable_errors
from geolift.fuse import FusionPlan, prepare_fusion, scratch_space, write_fusion
from geolift.io import check_output_path, is_remote
from geolift.io.vsi import is_vsi_path

__all__ = ["JobOutcome", "job_task", "token_for"]

log = logging.getLogger("geolift")


@dataclass(frozen=True)
class JobOutcome:
    """What a job task returns to the client: a few figures for the report, never pixels."""

    seconds: float
    attempts: int  # the most tries any one task of the job needed (the job task's own attempt included)
    pair_check: str


def _window_key(window) -> tuple[int, int, int, int]:
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


def token_for(job: BatchJob, digest: str) -> str:
    """A readable, unique-per-job prefix for the job's Dask task keys (seen on the dashboard)."""
    return f"{re.sub(r'[^A-Za-z0-9_]+', '_', job.name)[:40]}-{digest[:8]}"


class _TileFeed:
    """Hands one job's output blocks to its writer in window order, keeping a few tile tasks ahead."""

    def __init__(self, client, job: BatchJob, settings: BatchSettings, topic: str | None, token: str, plan_future,
                 windows: list, ahead: int):
        self.client, self.job, self.settings, self.topic = client, job, settings, topic
        self.token, self.plan_future, self.ahead = token, plan_future, ahead
        tile = job.options.tile_size
        per_task = max(1, settings.pixels_per_task // (tile * tile))
        self.groups = [windows[i:i + per_task] for i in range(0, len(windows), per_task)]
        self.where = {_window_key(w): (g, k) for g, group in enumerate(self.groups) for k, w in enumerate(group)}
        self.futures: dict[int, Any] = {}
        self.submitted = 0
        self.current: tuple[int, list] | None = None
        self.most_tries = 1

    def _submit(self, g: int):
        return self.client.submit(
            predict_task, self.plan_future, self.groups[g], self.settings.torch_threads, self.job.name,
            self.settings.qa, self.topic, key=f"geolift_tiles-{self.token}-{g}-{uuid.uuid4().hex[:8]}",
            priority=1, pure=False)

    def _fill(self, upto: int) -> None:
        while self.submitted < min(upto, len(self.groups)):
            self.futures[self.submitted] = self._submit(self.submitted)
            self.submitted += 1

    def block(self, window):
        g, k = self.where[_window_key(window)]
        if self.current is None or self.current[0] != g:
            self._fill(g + 1 + self.ahead)
            what = f"tile task {g + 1}/{len(self.groups)}"  # logged on the job's thread: the client adds the job
            blocks, tries = await_with_retries(self.futures.pop(g), lambda: self._submit(g), self.settings.retries,
                                               what)
            self.most_tries = max(self.most_tries, tries)
            self.current = (g, blocks)
        return self.current[1][k]

    def close(self) -> None:
        """Cancel the tile tasks the writer will not consume (the job failed)."""
        left = list(self.futures.values())
        self.futures.clear()
        if left:
            try:
                self.client.cancel(left)
            except Exception:  # noqa: BLE001 - best effort while failing
                pass


def _prepare_outputs(job: BatchJob, settings: BatchSettings) -> Path | None:
    """Check the output paths, make the folder and clear what an earlier, interrupted attempt left (its hidden
    temporary files, and the sidecar of a result about to be replaced); the QA path, or None."""
    output = Path(job.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    local_inputs = [i for i in job.inputs if not is_remote(i)]
    check_output_path(output, overwrite=True, inputs=local_inputs)
    sidecar_path(output).unlink(missing_ok=True)  # the resume check must not pair an old sidecar with a new file
    remove_leftovers(output)
    if not settings.qa:
        return None
    qa_path = check_output_path(job.qa_output, overwrite=True, inputs=[*local_inputs, output])
    remove_leftovers(Path(qa_path))
    return Path(qa_path)


def _write(plan: FusionPlan, job: BatchJob, settings: BatchSettings, topic: str | None, token: str,
           qa_path: Path | None, progress) -> int:
    """Write the output (and QA layer), predicting here or on tile tasks; the most tries a tile task needed."""
    grid = plan.grid
    if grid.width * grid.height <= settings.pixels_per_task:
        write_fusion(plan, job.output, progress=progress, inputs=job.inputs, qa_path=qa_path)
        return 1
    from distributed import worker_client

    with worker_client(separate_thread=True) as client:  # secede: tile tasks may run on this worker's thread
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()) or 1
        plan_future = client.scatter(plan, hash=False)
        feed = _TileFeed(client, job, settings, topic, token, plan_future, plan.output_windows(),
                         settings.tasks_ahead or max(2, threads))
        log.info("%d output windows in %d tile tasks.", len(feed.where), len(feed.groups))
        try:
            write_fusion(plan, job.output, progress=progress, inputs=job.inputs, blocks=feed.block, qa_path=qa_path)
        finally:
            feed.close()
            plan_future.release()
    return feed.most_tries


@with_portable_errors
def job_task(job: BatchJob, settings: BatchSettings, fingerprint: dict[str, Any], digest: str, topic: str | None,
             attempt: int = 1) -> JobOutcome:
    """Dask task: one whole job on a worker. Writes the output, its QA layer and STAC Item when asked, and last
    the sidecar that marks the job done for the resume check. An output on object storage (``/vsis3/...``) is
    written in a local folder and uploaded, sidecar last (:mod:`geolift.batch.object_storage`)."""
    if not is_vsi_path(job.output):
        return _run_job(job, settings, fingerprint, digest, topic, attempt)
    from geolift.batch.object_storage import local_stage, upload_outputs

    with local_stage(job) as local:
        outcome = _run_job(local, settings, fingerprint, digest, topic, attempt)
        with task_context(job.name, settings.torch_threads, topic):
            upload_outputs(local, job, settings)
    return outcome


def _run_job(job: BatchJob, settings: BatchSettings, fingerprint: dict[str, Any], digest: str, topic: str | None,
             attempt: int) -> JobOutcome:
    started = time.perf_counter()
    with task_context(job.name, settings.torch_threads, topic) as progress:
        qa_path = _prepare_outputs(job, settings)
        # The task's thread budget is its worker thread's: torch_threads (GDAL's too, and no predict-ahead
        # thread when it is 1), so that N one-thread workers use N cores and scale as such.
        options = replace(job.options, overwrite=True, num_threads=settings.torch_threads)
        with ExitStack() as stack:  # pass 1's scratch, for a job this task writes whole (not split into tile tasks)
            scratch_dir = stack.enter_context(scratch_space(options.scratch, job.output))
            plan = prepare_fusion(job.hsi, job.msi_source, options, progress=progress, scratch_dir=scratch_dir,
                                  scratch_max_pixels=settings.pixels_per_task)
            if plan.scratch is not None:
                stack.callback(plan.scratch.close)  # before its folder goes
            tries = max(attempt, _write(plan, job, settings, topic, token_for(job, digest), qa_path, progress))
        if settings.stac_collection:
            from geolift.stac import item_for_output, item_path_for
            from geolift.stac import write_json_atomic as write_item

            item_path = item_path_for(job.output)
            write_item(item_for_output(job.output, item_path, qa=qa_path, collection=settings.stac_collection),
                       item_path)
        seconds = time.perf_counter() - started
        write_json_atomic(sidecar_path(Path(job.output)), {
            "format": SIDECAR_FORMAT, "job": job.name, "hash": digest, "fingerprint": fingerprint,
            "finished_utc": _utc_now(), "seconds": round(seconds, 3), "attempts": tries,
            "pair_check": plan.report.pair_check, "written_by": _this_worker(),
        })
    return JobOutcome(seconds=seconds, attempts=tries, pair_check=pair_check_text(plan.report.pair_check))


def _this_worker() -> dict[str, str]:
    """Which worker wrote the job (its Dask address and host), for the sidecar."""
    import socket

    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):  # run outside a Dask worker
        address = ""
    return {"worker": address, "host": socket.gethostname()}


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
