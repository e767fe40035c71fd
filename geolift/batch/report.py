"""The batch report: one row per job (done, skipped or failed, and why), saved as JSON and CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geolift.batch.jobs import BatchJob
from geolift.batch.pairing import days_apart
from geolift.batch.resume import write_json_atomic, write_text_atomic
from geolift.errors import OutputError

__all__ = ["REPORT_CSV", "REPORT_JSON", "BatchReport", "JobResult", "job_result"]

REPORT_JSON = "batch_report.json"
REPORT_CSV = "batch_report.csv"


@dataclass
class JobResult:
    """One row of the batch report."""

    job: str
    hsi: str
    msi: str  # several MSI files joined by ";"
    output: str
    status: str  # done | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    attempts: int = 0  # most tries any one task of the job needed (0: skipped)
    pair_check: str = ""  # geolift.checks' verdict on the pair ("consistent", or "inconsistent: <causes>")
    days_apart: int | None = None  # days between the HSI's and the MSI's acquisitions (dates in their names)


@dataclass
class BatchReport:
    """What a batch did; ``write`` saves it as JSON and CSV."""

    results: list[JobResult]
    started_utc: str
    seconds: float
    scheduler: str
    workers: int
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("done", "skipped", "failed")} | {"total": len(self.results)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_utc": self.started_utc, "seconds": round(self.seconds, 3), "scheduler": self.scheduler,
            "workers": self.workers, "interrupted": self.interrupted, "summary": self.summary(),
            "jobs": [asdict(r) for r in self.results],
        }

    def write(self, outdir: str | Path) -> tuple[Path, Path]:
        """Write ``batch_report.json`` and ``batch_report.csv`` into ``outdir`` (atomically); ``OutputError``
        when they cannot be written (the outputs of the jobs are kept)."""
        outdir = Path(outdir)
        json_path, csv_path = outdir / REPORT_JSON, outdir / REPORT_CSV
        buffer = io.StringIO()
        columns = [f.name for f in JobResult.__dataclass_fields__.values()]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            writer.writerow(asdict(r) | {"seconds": f"{r.seconds:.2f}"})
        try:
            write_json_atomic(json_path, self.to_dict())
            write_text_atomic(csv_path, buffer.getvalue())
        except OSError as exc:
            raise OutputError(f"Cannot write the batch report into {outdir} ({exc.strerror or exc}); the "
                              f"finished outputs are kept.") from None
        return json_path, csv_path


def job_result(job: BatchJob, status: str, reason: str = "", seconds: float = 0.0, attempts: int = 0,
               pair_check: str = "") -> JobResult:
    """The report row of ``job``."""
    return JobResult(job=job.name, hsi=job.hsi, msi=";".join(job.msi), output=job.output, status=status,
                     reason=reason, seconds=round(seconds, 3), attempts=attempts, pair_check=pair_check,
                     days_apart=days_apart(job.hsi, job.msi[0]))


def pair_check_text(check: dict) -> str:
    """A report's ``pair_check`` as one cell: the verdict, and the causes when it is inconsistent."""
    if not check:
        return ""
    causes = " ".join(check.get("causes") or [])
    return check["verdict"] + (f": {causes}" if causes else "")
