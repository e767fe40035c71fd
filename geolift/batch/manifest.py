"""Batch manifests: a CSV file, one job per line, whose cells override the batch-wide options for that job."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from geolift import srf
from geolift.batch.jobs import BatchJob, check_sensor_bands, check_writable_output, job_name, output_folder, sentence
from geolift.errors import BatchError, InputError, SensorError
from geolift.fuse import FuseOptions, default_output_path
from geolift.io import COMPRESSIONS, gdal_path
from geolift.io.products.common import OVERLAP_CHOICES

__all__ = ["MANIFEST_COLUMNS", "REQUIRED_COLUMNS", "read_manifest"]

#: Columns a manifest may have. ``hsi`` and ``msi`` are required; the others override the
#: batch-wide options for one job (an empty cell keeps the batch-wide value).
MANIFEST_COLUMNS = (
    "hsi", "msi", "sensor", "bands", "output", "srf", "steps", "members", "seed", "preset", "harmonize", "align",
    "drop_uncovered", "dtype", "compress", "tile_size", "device", "overlap", "resolution",
)
REQUIRED_COLUMNS = ("hsi", "msi")

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}
_DTYPES = ("float32", "int16")


def _split_msi(text: str) -> list[str]:
    """Several MSI files in one cell: separated by ``;`` (paths may then hold spaces), else by whitespace."""
    parts = text.split(";") if ";" in text else text.split()
    return [p.strip() for p in parts if p.strip()]


def _parse_bool(value: str, column: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"column {column!r} must be true or false, got {value!r}")


def _parse_int(value: str, column: str, minimum: int | None = None) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"column {column!r} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"column {column!r} must be at least {minimum}, got {number}")
    return number


def _parse_positive_float(value: str, column: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError(f"column {column!r} must be a number, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"column {column!r} must be positive, got {value!r}")
    return number


def _parse_choice(value: str, column: str, choices: Sequence[str]) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise ValueError(f"column {column!r} must be one of {', '.join(choices)}, got {value!r}")
    return v


def _row_options(row: dict[str, str], defaults: FuseOptions, base: Path) -> FuseOptions:
    """The batch-wide options with this row's non-empty option cells applied."""
    changes: dict[str, Any] = {}
    for column, raw in row.items():
        value = (raw or "").strip()
        if not value or column in ("hsi", "msi", "output"):
            continue
        if column == "sensor":
            changes["sensor"] = value
        elif column == "bands":
            changes["bands"] = srf.parse_band_list(value)
        elif column == "srf":
            changes["srf_path"] = gdal_path(value, base)
        elif column == "steps":
            changes["steps"] = _parse_int(value, column, minimum=1)
        elif column == "members":
            changes["members"] = _parse_int(value, column, minimum=1)
        elif column == "seed":
            changes["seed"] = _parse_int(value, column)
        elif column == "tile_size":
            size = _parse_int(value, column, minimum=16)
            if size % 16:
                raise ValueError(f"column 'tile_size' must be a multiple of 16, got {size}")
            changes["tile_size"] = size
        elif column in ("harmonize", "align", "drop_uncovered"):
            changes[column] = _parse_bool(value, column)
        elif column == "dtype":
            changes["dtype"] = _parse_choice(value, column, _DTYPES)
        elif column == "compress":
            changes["compress"] = _parse_choice(value, column, tuple(COMPRESSIONS))
        elif column == "resolution":
            changes["resolution"] = _parse_positive_float(value, column)
        elif column == "overlap":
            changes["overlap"] = _parse_choice(value, column, OVERLAP_CHOICES)
        elif column in ("preset", "device"):
            changes[column] = value
    options = replace(defaults, **changes)
    if options.sensor and options.srf_path:
        raise ValueError("give either a sensor or an srf file, not both")
    return options


def read_manifest(manifest: str | Path, outdir: str | Path, defaults: FuseOptions | None = None) -> list[BatchJob]:
    """Parse a CSV manifest into jobs; every mistake raises :class:`BatchError` naming the line.

    Header: ``hsi,msi`` plus any of :data:`MANIFEST_COLUMNS` (e.g. ``hsi,msi,sensor,bands``); one
    row per job. Blank lines and lines starting with ``#`` are ignored. Relative input paths are
    relative to the manifest's folder; a relative ``output`` is relative to ``outdir`` (default:
    ``outdir/<HSI file stem>_fused.tif``). ``outdir`` and ``output`` may be on object storage (``s3://b/p``,
    ``/vsis3/b/p``; :func:`output_folder`). Option cells override ``defaults`` for that job.
    """
    manifest = Path(manifest).expanduser()
    outdir = output_folder(outdir)
    defaults = defaults or FuseOptions()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchError(f"Manifest {manifest} not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"Cannot read the manifest {manifest} ({exc}).") from None
    base = Path(os.path.abspath(manifest)).parent

    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    jobs: list[BatchJob] = []
    outputs: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = _parse_header(row, manifest)
                continue
            if len(row) > len(header):
                raise BatchError(f"{manifest}, line {line}: {len(row)} fields but the header has {len(header)} "
                                 "(quote paths that contain commas).")
            cells = dict(zip(header, [c.strip() for c in row] + [""] * (len(header) - len(row))))
            job = _row_job(cells, line, manifest, base, outdir, defaults)
            if job.output in outputs:
                raise BatchError(f"{manifest}, line {line}: writes the same output {job.output} as line "
                                 f"{outputs[job.output]}; give one of them an 'output' column value.")
            outputs[job.output] = line
            jobs.append(job)
    except csv.Error as exc:
        raise BatchError(f"{manifest}, line {reader.line_num}: not valid CSV ({exc}).") from None
    if header is None:
        raise BatchError(f"Manifest {manifest} is empty; it needs a header line such as hsi,msi,sensor,bands "
                         "and one line per job.")
    if not jobs:
        raise BatchError(f"Manifest {manifest} lists no jobs (only a header).")
    return jobs


def _parse_header(row: list[str], manifest: Path) -> list[str]:
    header = [cell.strip().lower().replace("-", "_").replace(" ", "_") for cell in row]
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    if unknown:
        raise BatchError(f"{manifest}: unknown column(s) {', '.join(map(repr, unknown))} in the header; "
                         f"known columns: {', '.join(MANIFEST_COLUMNS)}.")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise BatchError(f"{manifest}: column(s) {', '.join(repeated)} appear more than once in the header.")
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise BatchError(f"{manifest} has no {column!r} column; the header must name at least hsi and msi "
                             f"(e.g. hsi,msi,sensor,bands), found: {','.join(header)}.")
    return header


def _row_job(cells: dict[str, str], line: int, manifest: Path, base: Path, outdir: Path,
             defaults: FuseOptions) -> BatchJob:
    where = f"{manifest}, line {line}"
    if not cells.get("hsi"):
        raise BatchError(f"{where}: the hsi cell is empty.")
    msi = _split_msi(cells.get("msi", ""))
    if not msi:
        raise BatchError(f"{where}: the msi cell is empty.")
    try:
        options = _row_options(cells, defaults, base)
        check_sensor_bands(options)
        hsi = gdal_path(cells["hsi"], base)
        msi_paths = tuple(gdal_path(m, base) for m in msi)
    except (ValueError, SensorError, InputError) as exc:
        raise BatchError(f"{where}: {sentence(exc)}") from None
    if cells.get("output"):
        try:
            output = gdal_path(cells["output"], outdir)
            check_writable_output(output)
        except (InputError, BatchError) as exc:
            raise BatchError(f"{where}: {sentence(exc)}") from None
    else:
        output = str(default_output_path(hsi, outdir))
    return BatchJob(name=job_name(output, outdir), hsi=hsi, msi=msi_paths, output=output, options=options, line=line)
