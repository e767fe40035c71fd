"""Outputs on object storage (``/vsis3/``, ``/vsigs/``, ``/vsiaz/``): write locally on the worker, then upload.

GDAL writes a GeoTIFF with seeks back into the file (tile offsets, the header), which an object cannot take; and
an object store has no rename, so the local writer's "hidden temporary file renamed into place" has no counterpart
there. So a job
whose output is a virtual file system path writes everything (output, QA layer, STAC Item, sidecar) exactly as a
local job does, into a private folder under the worker's temporary folder (``tempfile``: ``TMPDIR``), and then
uploads the files, **the sidecar last**. An object becomes visible only when its upload completes, so a reader
never sees part of a file; a job that fails uploads nothing; and since the resume check trusts only an output with
a matching sidecar, a job killed between two uploads is simply redone. The old sidecar is deleted before the
first upload, so it can never vouch for a new, partly uploaded set. The worker needs free local space of about one
output (plus its QA layer) per running job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from geolift.batch.jobs import BatchJob, BatchSettings
from geolift.batch.resume import sidecar_path
from geolift.errors import BatchError, OutputError
from geolift.io import vsi

__all__ = ["STAGE_PREFIX", "check_remote_folder", "local_stage", "upload_outputs"]

log = logging.getLogger("geolift")

#: Name of a job's local folder under the temporary folder: ``geolift-stage-<worker pid>.<host>-<random>``.
STAGE_PREFIX = "geolift-stage-"


def _stage_tag(pid: int) -> str:
    """``<pid>.<host>``: a process is known alive or dead only on its own machine (TMPDIR may be shared)."""
    host = re.sub(r"[^A-Za-z0-9_]+", "_", socket.gethostname()) or "host"
    return f"{pid}.{host}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_abandoned_stages(folder: str | None = None) -> None:
    """Remove the local folders of jobs whose worker process died (killed mid-job: no ``finally`` ran)."""
    root = Path(folder or tempfile.gettempdir())
    here = _stage_tag(0).split(".", 1)[1]
    for stage in root.glob(f"{STAGE_PREFIX}*"):
        tag = stage.name[len(STAGE_PREFIX):].rsplit("-", 1)[0]
        pid, _, host = tag.partition(".")
        if host == here and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)
            log.info("Removed %s, left by a worker that died.", stage)


@contextmanager
def local_stage(job: BatchJob) -> Iterator[BatchJob]:
    """``job`` with its output in a new private local folder (same file name); the folder is removed on exit."""
    remove_abandoned_stages()
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{_stage_tag(os.getpid())}-"))
    except OSError as exc:
        raise OutputError(f"Cannot create a local folder for {job.output} under {tempfile.gettempdir()} "
                          f"({exc.strerror or exc}); set TMPDIR to a folder with space.") from None
    try:
        yield replace(job, output=str(folder / PurePosixPath(job.output).name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _item_bytes(local_item: Path) -> bytes:
    """The Item written in the local folder, its links to local inputs made absolute (relative ones would point
    from the local folder, not from the object)."""
    from geolift.stac import json_bytes

    item = json.loads(local_item.read_text())
    for link in item.get("links", []):
        href = link.get("href", "")
        if link.get("rel") == "derived_from" and "://" not in href and not href.startswith("/"):
            link["href"] = os.path.normpath(os.path.join(local_item.parent, href))
    return json_bytes(item)


def upload_outputs(local: BatchJob, job: BatchJob, settings: BatchSettings) -> None:
    """Upload what the job task wrote for ``local`` to ``job``'s remote paths: output, QA layer, Item, and last
    the sidecar. ``OutputError`` when an upload fails (the sidecar is then not uploaded: the job is redone)."""
    from geolift.stac import item_path_for

    started, total = time.perf_counter(), 0
    remote_sidecar = sidecar_path(job.output)
    vsi.unlink(remote_sidecar)  # first: an old sidecar must never vouch for a new, partly uploaded set
    files = [(Path(local.output), job.output)]
    if settings.qa:
        files.append((Path(local.qa_output), job.qa_output))
    for source, target in files:
        total += vsi.upload(source, target)
    if settings.stac_collection:
        data = _item_bytes(item_path_for(local.output))
        vsi.write_bytes(item_path_for(job.output), data)
        total += len(data)
    total += vsi.upload(sidecar_path(local.output), remote_sidecar)
    log.info("Uploaded %d file(s), %.1f MB, to %s in %.1f s.", len(files) + 1 + bool(settings.stac_collection),
             total / 1e6, PurePosixPath(job.output).parent, time.perf_counter() - started)


def check_remote_folder(folder: str | os.PathLike) -> None:
    """Fail early, before any job, when ``folder`` (a ``/vsis3/...`` prefix) cannot be written from here: write
    and delete a small probe object. ``BatchError`` with GDAL's reason (no bucket, no credentials, ...)."""
    probe = f"{os.fspath(folder).rstrip('/')}/.geolift-probe-{uuid.uuid4().hex[:12]}"
    try:
        vsi.write_bytes(probe, b"geolift write probe\n")
    except OutputError as exc:
        raise BatchError(f"The output folder {folder} cannot be written: {str(exc).rstrip('.')}. Check the "
                         "bucket name and the credentials (AWS_* / GDAL configuration).") from None
    vsi.unlink(probe)
