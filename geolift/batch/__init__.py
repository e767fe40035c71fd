"""Batch fusion on Dask distributed: many scene pairs, resumable and fault tolerant.

Users fuse archives (hundreds of HSI/MSI pairs), more than one machine does in a night, so a
batch runs on a Dask cluster: a local one by default, or any existing one (``tcp://host:8786``).

Jobs come from a CSV manifest (:func:`read_manifest`) or from two folders paired by scene id or
footprint (:func:`pair_folders`). :func:`run_batch` then runs every job that is not already done:

* **Workers write, the client coordinates.** One job task per job (:mod:`geolift.batch.writer`) runs
  :func:`geolift.fuse.prepare_fusion` and :func:`geolift.fuse.write_fusion` on a worker (the code path of
  ``geolift fuse``, so the output is identical) and writes the output, QA layer, STAC Item and, last, the sidecar
  to the output location, which workers must see. The client decides what to run, retries and reports; no pixel
  crosses to it, so it does not cap the cluster's throughput. On object storage (``/vsis3/…``) a job writes in a
  local folder and uploads, sidecar last (:mod:`geolift.batch.object_storage`). A task keeps to its worker
  thread's budget (torch and GDAL threads = ``BatchSettings.torch_threads``, no predict-ahead thread), so N
  one-thread workers use N cores.
* **Whole scenes, or tiles when workers would idle.** While there are at least as many jobs to run as worker
  threads, each scene is one task. Otherwise a scene larger than ``BatchSettings.pixels_per_task`` output pixels is
  split: its job task secedes (``worker_client``), ships the picklable :class:`~geolift.fuse.FusionPlan` to the
  cluster once and keeps a few tile tasks (:meth:`FusionPlan.predict_window` over consecutive windows) ahead of
  its writer, taking their blocks in window order.
* **Resumable.** After an output is renamed into place, a sidecar ``<output>.geolift.json`` records
  a hash of the job's inputs and parameters (:func:`job_fingerprint`). A later run skips a job whose
  output exists and whose sidecar hash matches, and redoes everything else (changed inputs or
  parameters, deleted output, missing sidecar); ``force`` redoes all. Input files are identified by
  path, size and modification time (cheap for multi-GB scenes, no reading); custom SRF CSVs by a
  SHA-256 of their content; URLs by the URL alone (remote objects are assumed not to change).
* **Fault tolerant.** A task that fails for a reason that may pass (its worker died or ran out of
  memory: ``KilledWorker``; ``OSError``, e.g. a network read; ``MemoryError``) is resubmitted, at
  most ``BatchSettings.retries`` times per task. A :class:`~geolift.errors.GeoliftError` (bad
  input, no overlap, ...) is deterministic and is not retried. A job that still fails is recorded
  with its reason and the other jobs go on; a failed job never leaves a partial output.

Determinism: every output pixel is computed on its own with exact products (docs/reproducibility.md),
so tile tasks cut the scene any way they like; but a fit's floating-point result depends on the
number of threads torch uses (the reductions over pixels are split between threads), so every task
pins torch to ``BatchSettings.torch_threads`` threads (default 1). The output then equals, array for
array, ``geolift fuse`` run with the same options, seed and thread count (its default is one). The
thread count is part of the job hash.

The library never prints: it logs to ``logging.getLogger("geolift")`` (worker-side log lines of a
job come back prefixed with the job name) and reports progress through ``progress(JobEvent)``.

Layout: :mod:`~geolift.batch.jobs` (jobs, settings, events), :mod:`~geolift.batch.manifest` (CSV manifests),
:mod:`~geolift.batch.pairing` (two folders), :mod:`~geolift.batch.resume` (fingerprints, sidecars),
:mod:`~geolift.batch.report`, :mod:`~geolift.batch.cluster` (Dask set-up), :mod:`~geolift.batch.tasks` (worker
side) and :mod:`~geolift.batch.runner` (client side).
"""

from geolift.batch.cluster import dashboard_link, dask_client, default_worker_count, start_local_cluster
from geolift.batch.jobs import BatchJob, BatchSettings, JobEvent
from geolift.batch.manifest import MANIFEST_COLUMNS, read_manifest
from geolift.batch.pairing import pair_folders, scene_key
from geolift.batch.report import BatchReport, JobResult
from geolift.batch.resume import is_complete, job_fingerprint, job_hash, sidecar_path
from geolift.batch.runner import run_batch
from geolift.batch.tasks import is_retryable
from geolift.io import gdal_path, is_remote

__all__ = [
    "BatchJob",
    "BatchReport",
    "BatchSettings",
    "JobEvent",
    "JobResult",
    "MANIFEST_COLUMNS",
    "dask_client",
    "dashboard_link",
    "default_worker_count",
    "gdal_path",
    "is_complete",
    "is_remote",
    "is_retryable",
    "job_fingerprint",
    "job_hash",
    "pair_folders",
    "read_manifest",
    "run_batch",
    "scene_key",
    "sidecar_path",
    "start_local_cluster",
]
