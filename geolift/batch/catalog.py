"""STAC for a batch: one Item beside each finished output and a Collection (``collection.json``) linking them all."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import rasterio

from geolift.batch.jobs import BatchJob
from geolift.batch.report import BatchReport
from geolift.errors import InputError, OutputError
from geolift.io import vsi
from geolift.io.vsi import is_vsi_path
from geolift.stac import batch_collection, collection_for_items, item_for_output, item_path_for, json_bytes

__all__ = ["COLLECTION_FILE", "write_batch_catalog"]

log = logging.getLogger("geolift")

COLLECTION_FILE = "collection.json"


def write_batch_catalog(jobs: Sequence[BatchJob], report: BatchReport, outdir: str | Path,
                        qa: bool = False) -> tuple[Path, list[Path]]:
    """Write ``OUTDIR/collection.json`` linking the Item beside every output the batch finished or found up to date,
    its extent covering all. The workers wrote the Items of the jobs they ran; a skipped job's Item is made here
    from the file if it has none yet (a few header reads);
    failed jobs have no Item. Returns the Collection's and the Items' paths; an Item that cannot be made is a
    warning (the others are written)."""
    if is_vsi_path(outdir):
        return _write_remote_catalog(jobs, report, outdir, qa)
    finished = {r.job for r in report.results if r.status in ("done", "skipped")}
    outputs = [(job.output, job.qa_output if qa else None) for job in jobs if job.name in finished]
    collection, items, failures = batch_collection(outputs, Path(outdir) / COLLECTION_FILE, reuse_items=True)
    for failure in failures:
        log.warning("No STAC Item for %s", failure)
    log.info("STAC: %s links %d Item(s).", collection, len(items))
    return collection, items


def _write_remote_catalog(jobs: Sequence[BatchJob], report: BatchReport, outdir: str | Path,
                          qa: bool) -> tuple[Path, list[Path]]:
    """:func:`write_batch_catalog` for an OUTDIR on object storage, through GDAL. A job done in this run has the
    Item its worker just uploaded; a skipped job's Item is made again from its output (object storage gives no
    cheap modification time to tell a stale Item from a current one) and uploaded."""
    collection_path = Path(outdir) / COLLECTION_FILE
    status = {r.job: r.status for r in report.results}
    written: list[tuple[dict, Path]] = []
    for job in jobs:
        if status.get(job.name) not in ("done", "skipped"):
            continue
        path = item_path_for(job.output)
        try:
            if status[job.name] == "done":
                item = json.loads(vsi.read_bytes(path))
            else:
                for made in (job.output, job.qa_output):
                    vsi.forget(made)  # a worker may have replaced it since this process last read it
                with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):  # no listing of OUTDIR per file
                    item = item_for_output(job.output, path, qa=job.qa_output if qa else None,
                                           collection=collection_path)
                vsi.write_bytes(path, json_bytes(item))
        except (InputError, OutputError, ValueError) as exc:
            log.warning("No STAC Item for %s: %s", Path(job.output).name, exc)
            continue
        written.append((item, path))
    collection = collection_for_items(written, collection_path)
    vsi.write_bytes(collection_path, json_bytes(collection))
    log.info("STAC: %s links %d Item(s).", collection_path, len(written))
    return collection_path, [p for _, p in written]
