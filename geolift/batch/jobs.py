"""What a batch is made of: jobs, how it runs, and the progress events it reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from geolift import srf
from geolift.errors import BatchError, InputError
from geolift.fuse import FuseOptions
from geolift.io.paths import gdal_path
from geolift.io.vsi import is_vsi_path, is_writable_vsi_path

__all__ = ["BatchJob", "BatchSettings", "JobEvent", "check_sensor_bands", "check_writable_output", "job_name",
           "output_folder", "sentence"]


@dataclass(frozen=True)
class BatchJob:
    """One fusion to run: an HSI, one or more MSI files, where to write, and the options."""

    name: str  # unique in a batch: the output path relative to the output folder, without suffix
    hsi: str  # local absolute path or a GDAL path (/vsicurl/..., /vsis3/...)
    msi: tuple[str, ...]  # one multi-band raster or several single-band files
    output: str  # absolute path of the output GeoTIFF, or a GDAL object-storage path (/vsis3/bucket/key)
    options: FuseOptions = field(default_factory=FuseOptions)
    line: int | None = None  # manifest line, for messages

    @property
    def msi_source(self) -> str | list[str]:
        return self.msi[0] if len(self.msi) == 1 else list(self.msi)

    @property
    def inputs(self) -> list[str]:
        return [self.hsi, *self.msi]

    @property
    def qa_output(self) -> str:
        """Where ``--qa`` writes this job's reliability layer: beside the output, ``<stem>_qa.tif``."""
        out = Path(self.output)
        return str(out.with_name(f"{out.stem}_qa.tif"))



SPLIT_PIXELS_PER_TASK = 512 * 512  # tile-task size when a batch has fewer jobs than worker threads


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs (not what it computes, except ``torch_threads`` and ``qa``, which are hashed)."""

    torch_threads: int = 1  # torch threads in every task; fixes the fit's floating-point result
    qa: bool = False  # also write each output's reliability layer beside it (<output stem>_qa.tif)
    retries: int = 2  # resubmissions per task after a retryable failure
    force: bool = False  # redo jobs even when their sidecar matches
    #: output pixels per tile task; scenes up to this size are one task. None: whole scenes while there are at least
    #: as many jobs to run as worker threads (job-level parallelism needs no pixel to cross between workers), else
    #: :data:`SPLIT_PIXELS_PER_TASK`
    pixels_per_task: int | None = None
    max_active_jobs: int | None = None  # job tasks submitted at once; None: 2 x worker threads + 1
    tasks_ahead: int | None = None  # tile tasks submitted ahead of the writer per job; None: worker threads
    stac_collection: str | None = None  # also write a STAC Item beside each output, linking this Collection file

    def __post_init__(self) -> None:
        if self.torch_threads < 1:
            raise BatchError(f"torch threads must be at least 1, got {self.torch_threads}.")
        if self.retries < 0:
            raise BatchError(f"retries must be 0 or more, got {self.retries}.")
        if self.pixels_per_task is not None and self.pixels_per_task < 1:
            raise BatchError(f"pixels per task must be at least 1, got {self.pixels_per_task}.")


@dataclass(frozen=True)
class JobEvent:
    """Progress of one job: ``stage`` is queued, read, train, write, retry, done, skipped or failed."""

    job: str
    stage: str
    done: int = 0
    total: int = 0
    message: str = ""


def output_folder(outdir: str | os.PathLike) -> Path:
    """OUTDIR as jobs name their outputs: a local folder made absolute, or object storage as GDAL's path
    (``s3://bucket/prefix`` -> ``/vsis3/bucket/prefix``; ``/vsis3/...`` as given). ``BatchError`` for a URL GDAL
    cannot write to (``https://``, ``/vsicurl/``)."""
    text = os.fspath(outdir)
    if is_vsi_path(text) or "://" in text:
        try:
            folder = gdal_path(text)
        except InputError as exc:
            raise BatchError(f"Output folder: {sentence(exc)}") from None
        check_writable_output(folder, "Output folder")
        return Path(folder)
    return Path(os.path.abspath(Path(text).expanduser()))


def check_writable_output(path: str, what: str = "Output") -> None:
    """``BatchError`` when ``path`` is a virtual file system path GDAL cannot write (``/vsicurl/``, ``/vsizip/``)."""
    if is_vsi_path(path) and not is_writable_vsi_path(path):
        raise BatchError(f"{what} {path} is read-only for GDAL; outputs on object storage go to s3://, gs:// or "
                         "az:// (/vsis3/, /vsigs/, /vsiaz/) paths.")


def job_name(output: str, outdir: Path) -> str:
    """A job's name: its output path relative to the output folder, without the suffix (unique in a batch)."""
    out = Path(output)
    try:
        rel = out.relative_to(outdir)
    except ValueError:
        rel = out
    return str(rel.with_suffix("")) if rel.suffix else str(rel)


def check_sensor_bands(options: FuseOptions) -> None:
    """Fail at parse time on a sensor or band name the SRF library does not know (a typo in one row)."""
    if options.sensor:
        curves = srf.load_sensor(options.sensor)
        for band in options.bands or ():
            curves.resolve(band)


def sentence(exc: BaseException) -> str:
    """An error's message as one sentence with a single final full stop (to prefix with where it happened)."""
    text = str(exc).strip().rstrip(".")
    return text + "."
