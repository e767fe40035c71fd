"""The Dask cluster a batch runs on: a local one sized to the machine, or an existing scheduler."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from geolift.errors import BatchError
from geolift.fuse import usable_cores

__all__ = ["dashboard_link", "dask_client", "default_worker_count", "start_local_cluster"]

log = logging.getLogger("geolift")


def default_worker_count(torch_threads: int = 1) -> int:
    """One single-threaded worker process per ``torch_threads`` usable cores (at least one)."""
    return max(1, usable_cores() // max(1, int(torch_threads)))


def _has_bokeh() -> bool:
    """Whether the Dask dashboard can be served: bokeh installed, in a version this distributed accepts (the
    ``dashboard`` extra: ``pip install geolift[dashboard]``)."""
    try:
        import distributed.dashboard.core  # noqa: F401 - imports bokeh and checks its version
    except ImportError:
        return False
    return True


def start_local_cluster(n_workers: int | None = None, torch_threads: int = 1, memory_limit: str | float = "auto"):
    """A ``LocalCluster`` of worker processes with one Dask thread each (torch brings its own threads).

    The scheduler is configured so that a task whose worker dies fails at once (``allowed-failures``
    0) and each worker holds only the task it runs (``worker-saturation`` 1.0): batch retries then
    count every worker death, and a death only touches the task that was running.
    """
    import dask
    from distributed import LocalCluster

    n_workers = int(n_workers) if n_workers else default_worker_count(torch_threads)
    if n_workers < 1:
        raise BatchError(f"The number of workers must be at least 1, got {n_workers}.")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            memory_limit=memory_limit, dashboard_address=":0" if _has_bokeh() else None)


class _QuietTaskErrors(WorkerPlugin):
    """Worker plugin: drop the worker's own "Compute Failed" tracebacks; the batch reports each failure once."""

    name = "geolift-quiet-task-errors"

    def setup(self, worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_drop_compute_failed)


def _drop_compute_failed(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Compute Failed")


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None, torch_threads: int = 1,
                timeout: float = 30.0) -> Iterator[Any]:
    """A Dask client: on the scheduler at ``scheduler`` (``tcp://host:8786``), else on a new local cluster."""
    from distributed import Client

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError) as exc:
                raise BatchError(f"Cannot connect to the Dask scheduler at {scheduler} ({exc}).") from None
        else:
            cluster = start_local_cluster(n_workers, torch_threads)
            client = Client(cluster)
            client.register_plugin(_QuietTaskErrors(), name=_QuietTaskErrors.name)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def dashboard_link(client) -> str | None:
    """The Dask dashboard URL when the scheduler serves one, else None."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - no dashboard is not an error
        return None
    if "dashboard" not in services or not _scheduler_has_bokeh(client):
        return None  # the scheduler's HTTP server without bokeh serves only a "bokeh is missing" page
    return client.dashboard_link


def _scheduler_has_bokeh(client) -> bool:
    """Whether the scheduler's own environment has a bokeh its distributed accepts. Its HTTP server is registered
    as the "dashboard" service with or without bokeh, and an existing scheduler (``--scheduler``) may run in
    another environment than geolift's, so it is asked (distributed's version query, no code shipped to it)."""
    from distributed.versions import BOKEH_REQUIREMENT
    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        version = client.get_versions(check=False, packages=["bokeh"])["scheduler"]["packages"].get("bokeh")
        return version is not None and Version(version) in Requirement(str(BOKEH_REQUIREMENT)).specifier
    except Exception as exc:  # noqa: BLE001 - no dashboard is not an error
        log.debug("Could not tell whether the scheduler serves the Dask dashboard: %s", exc)
        return False
