"""STAC for a batch: one Item beside each finished output and a Collection (``collection.json``) linking them all."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from geolift.batch.jobs import BatchJob
from geolift.batch.report import BatchReport
from geolift.stac import batch_collection

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
    finished = {r.job for r in report.results if r.status in ("done", "skipped")}
    outputs = [(job.output, job.qa_output if qa else None) for job in jobs if job.name in finished]
    collection, items, failures = batch_collection(outputs, Path(outdir) / COLLECTION_FILE, reuse_items=True)
    for failure in failures:
        log.warning("No STAC Item for %s", failure)
    log.info("STAC: %s links %d Item(s).", collection, len(items))
    return collection, items
