"""Batch fusion on Dask distributed: many scene pairs, resumable and fault tolerant.

Users fuse archives (hundreds of HSI/MSI pairs), more than one machine does in a night, so a
batch runs on a Dask cluster: a local one by default, or any existing one (``tcp://host:8786``).

Jobs come from a CSV manifest (:func:`read_manifest`) or from two folders paired by scene id or
footprint (:func:`pair_folders`). :func:`run_batch` then runs every job that is not already done:

* **One training per scene, tiles shared by workers.** A ``prepare`` task per job runs
  :func:`geolift.fuse.prepare_fusion` on a worker (read, align, fit) and keeps the picklable
  :class:`~geolift.fuse.FusionPlan` in the cluster. A small scene (at most
  ``BatchSettings.pixels_per_task`` output pixels) is predicted inside that same task; a larger one
  is split into tile tasks, each predicting a run of consecutive output windows with
  :meth:`FusionPlan.predict_window` on whichever worker is free (Dask ships the plan to it).
* **The client writes.** Each job has a writer thread on the client that pulls the blocks in
  window order (at most a few tile tasks ahead, so neither the client nor the workers hold a whole
  scene) and streams them through :func:`geolift.fuse.write_fusion` into the atomic
  :class:`geolift.io.HSIWriter`. Workers therefore only *read* inputs (local paths they can see,
  or URLs GDAL reads); outputs, sidecars and reports all live where the client runs, so resuming
  never depends on a worker's disk. The same blocks in the same order through the same writer make
  the output identical to ``geolift fuse`` (see "Determinism" below).
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
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io as _stdio
import json
import logging
import os
import pickle
import re
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from distributed.diagnostics.plugin import WorkerPlugin

from geolift import srf
from geolift.errors import BatchError, GeoliftError, SensorError
from geolift.fuse import FuseOptions, FusionPlan, default_output_path, prepare_fusion, write_fusion
from geolift.io import block_windows, check_output_path

log = logging.getLogger("geolift")

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

#: Columns a manifest may have. ``hsi`` and ``msi`` are required; the others override the
#: batch-wide options for one job (an empty cell keeps the batch-wide value).
MANIFEST_COLUMNS = (
    "hsi", "msi", "sensor", "bands", "output", "srf", "steps", "seed", "preset", "harmonize", "align",
    "drop_uncovered", "dtype", "compress", "tile_size", "device",
)
REQUIRED_COLUMNS = ("hsi", "msi")

REPORT_JSON = "batch_report.json"
REPORT_CSV = "batch_report.csv"
SIDECAR_SUFFIX = ".geolift.json"
SIDECAR_FORMAT = "geolift-batch/1"

#: FuseOptions fields that do not change the output file (so they stay out of the job hash).
_RESULT_NEUTRAL_OPTIONS = ("overwrite", "num_threads")

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}
_DTYPES = ("float32", "int16")
_COMPRESSIONS = ("deflate", "zstd", "lzw", "none")

#: Raster files the folder-pairing mode looks at (ENVI headers are skipped: their data file is listed).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".bsq", ".bil", ".bip", ".dat", ".envi")

#: Default scene id: the first calendar date YYYYMMDD (also YYYY-MM-DD / YYYY_MM_DD) in a file name.
DATE_PATTERN = re.compile(
    r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)"
)

_URL_SCHEMES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/",
                "ftp": "/vsicurl/"}


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """One fusion to run: an HSI, one or more MSI files, where to write, and the options."""

    name: str  # unique in a batch: the output path relative to the output folder, without suffix
    hsi: str  # local absolute path or a GDAL path (/vsicurl/..., /vsis3/...)
    msi: tuple[str, ...]  # one multi-band raster or several single-band files
    output: str  # absolute path of the output GeoTIFF
    options: FuseOptions = field(default_factory=FuseOptions)
    line: int | None = None  # manifest line, for messages

    @property
    def msi_source(self) -> str | list[str]:
        return self.msi[0] if len(self.msi) == 1 else list(self.msi)

    @property
    def inputs(self) -> list[str]:
        return [self.hsi, *self.msi]


def gdal_path(text: str, base: Path | str | None = None) -> str:
    """A manifest path as GDAL should open it: URLs become ``/vsi...`` paths, local paths absolute.

    ``s3://b/k`` -> ``/vsis3/b/k``, ``gs://`` -> ``/vsigs/``, ``az://`` -> ``/vsiaz/``,
    ``http(s)://`` and ``ftp://`` -> ``/vsicurl/<url>``; ``/vsi...`` paths are kept. A relative local
    path is taken relative to ``base`` (the manifest's folder). URLs are never checked here: GDAL
    reports what it cannot read when the job runs.
    """
    text = text.strip()
    if text.startswith("/vsi"):
        return text
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if match:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "file":
            text = rest if rest.startswith("/") else "/" + rest
        elif scheme in _URL_SCHEMES:
            prefix = _URL_SCHEMES[scheme]
            return prefix + (text if prefix == "/vsicurl/" else rest)
        else:
            raise BatchError(f"Unsupported URL scheme {scheme!r} in {text!r}; use s3://, gs://, az://, http(s):// "
                             "or a GDAL /vsi... path.")
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return os.path.abspath(path)


def is_remote(path: str) -> bool:
    """True for GDAL virtual-file-system paths (``/vsicurl/``, ``/vsis3/``...), which only GDAL can stat."""
    return str(path).startswith("/vsi")


def _split_msi(text: str) -> list[str]:
    """Several MSI files in one cell: separated by ``;`` (paths may then hold spaces), else by whitespace."""
    parts = text.split(";") if ";" in text else text.split()
    return [p.strip() for p in parts if p.strip()]


def _split_bands(text: str) -> tuple[str, ...] | None:
    names = tuple(b for b in re.split(r"[\s,;]+", text.strip()) if b)
    return names or None


def _job_name(output: str, outdir: Path) -> str:
    out = Path(output)
    try:
        rel = out.relative_to(outdir)
    except ValueError:
        rel = out
    return str(rel.with_suffix("")) if rel.suffix else str(rel)


def _check_sensor_bands(options: FuseOptions) -> None:
    """Fail at parse time on a sensor or band name the SRF library does not know (a typo in one row)."""
    if options.sensor:
        curves = srf.load_sensor(options.sensor)
        for band in options.bands or ():
            curves.resolve(band)


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
            changes["bands"] = _split_bands(value)
        elif column == "srf":
            changes["srf_path"] = gdal_path(value, base)
        elif column == "steps":
            changes["steps"] = _parse_int(value, column, minimum=1)
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
            changes["compress"] = _parse_choice(value, column, _COMPRESSIONS)
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
    ``outdir/<HSI file stem>_fused.tif``). Option cells override ``defaults`` for that job.
    """
    manifest = Path(manifest).expanduser()
    outdir = Path(os.path.abspath(Path(outdir).expanduser()))
    defaults = defaults or FuseOptions()
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BatchError(f"Manifest {manifest} not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"Cannot read the manifest {manifest} ({exc}).") from None
    base = Path(os.path.abspath(manifest)).parent

    reader = csv.reader(_stdio.StringIO(text, newline=""))
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
        _check_sensor_bands(options)
        hsi = gdal_path(cells["hsi"], base)
        msi_paths = tuple(gdal_path(m, base) for m in msi)
    except (ValueError, SensorError, BatchError) as exc:
        raise BatchError(f"{where}: {_sentence(exc)}") from None
    if cells.get("output"):
        output = gdal_path(cells["output"], outdir)
        if is_remote(output):
            raise BatchError(f"{where}: outputs are written locally; {cells['output']!r} is a URL.")
    else:
        output = str(default_output_path(hsi, outdir))
    return BatchJob(name=_job_name(output, outdir), hsi=hsi, msi=msi_paths, output=output, options=options, line=line)


def _sentence(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text + "."


# ---------------------------------------------------------------------------------------------
# Pairing two folders
# ---------------------------------------------------------------------------------------------


def scene_key(name: str, match: str | re.Pattern | None = None) -> str | None:
    """The scene id in a file name: ``match``'s one group, else the first date (as YYYYMMDD); None if none.

    ``match`` is a regular expression with exactly one group, searched in the file name (not the
    folder), e.g. ``r"_(T\\d{2}[A-Z]{3})_"`` for an MGRS tile id.
    """
    if match is not None:
        pattern = re.compile(match) if isinstance(match, str) else match
        found = pattern.search(name)
        return found.group(1) if found else None
    found = DATE_PATTERN.search(name)
    return "".join(found.groups()) if found else None


def _compile_match(match: str | None) -> re.Pattern | None:
    if match is None:
        return None
    try:
        pattern = re.compile(match)
    except re.error as exc:
        raise BatchError(f"--match {match!r} is not a valid regular expression ({exc}).") from None
    if pattern.groups != 1:
        raise BatchError(f"--match {match!r} must have exactly one group (...) around the scene id; "
                         f"it has {pattern.groups}.")
    return pattern


def _raster_files(folder: Path, glob: str) -> list[Path]:
    if not folder.is_dir():
        raise BatchError(f"{folder} is not a folder.")
    return sorted(p for p in folder.glob(glob) if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def _footprint(path: Path) -> tuple[Any, tuple[float, float, float, float]] | None:
    """(CRS, bounds) of a raster from its metadata, or None when it cannot be opened."""
    from geolift.io import open_scene

    try:
        scene = open_scene(str(path), check_data=False)
    except GeoliftError as exc:
        log.warning("Pairing: cannot read the footprint of %s (%s)", path.name, exc)
        return None
    return scene.crs, tuple(scene.bounds)


def _overlap_area(a: tuple[Any, tuple], b: tuple[Any, tuple]) -> float:
    """Area of the intersection of two footprints, in the first one's CRS units."""
    from rasterio.warp import transform_bounds

    crs_a, (ax0, ay0, ax1, ay1) = a
    crs_b, box_b = b
    try:
        bx0, by0, bx1, by1 = box_b if crs_b == crs_a else transform_bounds(crs_b, crs_a, *box_b, densify_pts=21)
    except Exception:  # a CRS pair with no transformation: no usable overlap
        return 0.0
    width = min(ax1, bx1) - max(ax0, bx0)
    height = min(ay1, by1) - max(ay0, by0)
    return width * height if width > 0 and height > 0 else 0.0


def pair_folders(
    hsi_dir: str | Path,
    msi_dir: str | Path,
    outdir: str | Path,
    defaults: FuseOptions | None = None,
    match: str | None = None,
    hsi_glob: str = "*",
    msi_glob: str = "*",
) -> tuple[list[BatchJob], list[str]]:
    """Pair every HSI in ``hsi_dir`` with an MSI in ``msi_dir``; returns (jobs, unmatched HSI paths).

    Each HSI's scene id (:func:`scene_key`) is looked up among the MSI files' ids: exactly one MSI
    with the same id is its pair. Otherwise (no id, no MSI with it, or several) the MSI whose
    footprint overlaps the HSI's the most is chosen, among the same-id MSI files when there are
    several, else among all. An HSI that overlaps no MSI is left unmatched (and logged). One MSI may
    serve several HSI scenes. Raster files are those ending in one of :data:`RASTER_SUFFIXES`.
    """
    defaults = defaults or FuseOptions()
    pattern = _compile_match(match)
    outdir = Path(os.path.abspath(Path(outdir).expanduser()))
    hsi_files = _raster_files(Path(hsi_dir).expanduser(), hsi_glob)
    msi_files = _raster_files(Path(msi_dir).expanduser(), msi_glob)
    if not hsi_files:
        raise BatchError(f"No raster files ({', '.join(RASTER_SUFFIXES)}) match {hsi_glob!r} in {hsi_dir}.")
    if not msi_files:
        raise BatchError(f"No raster files ({', '.join(RASTER_SUFFIXES)}) match {msi_glob!r} in {msi_dir}.")
    try:
        _check_sensor_bands(defaults)
    except SensorError as exc:
        raise BatchError(_sentence(exc)) from None

    msi_keys = {m: scene_key(m.name, pattern) for m in msi_files}
    footprints: dict[Path, Any] = {}

    def footprint(path: Path):
        if path not in footprints:
            footprints[path] = _footprint(path)
        return footprints[path]

    jobs: list[BatchJob] = []
    unmatched: list[str] = []
    outputs: dict[str, str] = {}
    for hsi in hsi_files:
        key = scene_key(hsi.name, pattern)
        same_id = [m for m, k in msi_keys.items() if key is not None and k == key]
        if len(same_id) == 1:
            chosen, how = same_id[0], f"scene id {key}"
        else:
            chosen, how = None, "footprint overlap"
            own = footprint(hsi)
            if own is not None:
                areas = [(m, _overlap_area(own, fp)) for m in (same_id or msi_files) if (fp := footprint(m))]
                areas = [(m, a) for m, a in areas if a > 0]
                if areas:
                    chosen = max(areas, key=lambda item: item[1])[0]  # first of the largest, in name order
        if chosen is None:
            log.warning("Pairing: no MSI in %s matches %s (scene id %s, no overlapping footprint).",
                        msi_dir, hsi.name, key or "none")
            unmatched.append(str(hsi))
            continue
        output = str(default_output_path(hsi, outdir))
        if output in outputs:
            raise BatchError(f"{hsi.name} and {Path(outputs[output]).name} would both be written to {output}; "
                             "rename one or use a manifest with an 'output' column.")
        outputs[output] = str(hsi)
        log.info("Pairing: %s + %s (%s).", hsi.name, chosen.name, how)
        jobs.append(BatchJob(name=_job_name(output, outdir), hsi=os.path.abspath(hsi),
                             msi=(os.path.abspath(chosen),), output=output, options=defaults))
    if not jobs:
        raise BatchError(f"No HSI in {hsi_dir} could be paired with an MSI in {msi_dir} "
                         "(by scene id or footprint overlap).")
    return jobs, unmatched


# ---------------------------------------------------------------------------------------------
# Fingerprints and sidecars (resume)
# ---------------------------------------------------------------------------------------------


def _companions(path: Path) -> list[Path]:
    """Files whose change changes what GDAL reads for ``path``: the file, ENVI headers/data, .aux.xml."""
    names = [path, Path(str(path) + ".aux.xml"), Path(str(path) + ".hdr")]
    if path.suffix:
        names.append(path.with_suffix(".hdr"))
    if path.suffix.lower() == ".hdr":
        stem = path.with_suffix("")
        names += [stem] + [stem.with_name(stem.name + s) for s in (".bsq", ".bil", ".bip", ".img", ".dat")]
    seen: list[Path] = []
    for p in names:
        if p not in seen and p.is_file():
            seen.append(p)
    return seen


def _input_stamp(path: str) -> dict[str, Any]:
    if is_remote(path):
        return {"path": path}
    p = Path(path)
    if not p.exists():
        return {"path": path, "missing": True}
    files = []
    for f in _companions(p):
        st = f.stat()
        files.append([f.name, st.st_size, st.st_mtime_ns])
    return {"path": path, "files": files}


def _content_hash(path: str) -> str:
    if is_remote(path) or not Path(path).is_file():
        return f"unreadable:{path}"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _geolift_version() -> str:
    from geolift import __version__

    return __version__


def job_fingerprint(job: BatchJob, torch_threads: int = 1) -> dict[str, Any]:
    """Everything the output depends on: input stamps, result-relevant options, threads, version.

    Local inputs are stamped by path, size and modification time (ns) of the file and its
    companions (ENVI header, ``.aux.xml``); a custom SRF CSV by the SHA-256 of its content; URLs by
    the URL itself.
    """
    options = {k: v for k, v in job.options.to_dict().items() if k not in _RESULT_NEUTRAL_OPTIONS}
    return {
        "geolift": _geolift_version(),
        "output": job.output,
        "hsi": _input_stamp(job.hsi),
        "msi": [_input_stamp(m) for m in job.msi],
        "srf_sha256": _content_hash(job.options.srf_path) if job.options.srf_path else None,
        "options": options,
        "torch_threads": int(torch_threads),
    }


def job_hash(fingerprint: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar_path(output: str | Path) -> Path:
    """``<output>.geolift.json``: what produced the output, read to decide whether to skip the job."""
    return Path(str(output) + SIDECAR_SUFFIX)


def read_sidecar(output: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def is_complete(job: BatchJob, digest: str) -> bool:
    """True when the job's output exists and its sidecar records the same input/parameter hash."""
    if not Path(job.output).is_file():
        return False
    sidecar = read_sidecar(job.output)
    return sidecar is not None and sidecar.get("hash") == digest


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask is process-wide, not thread-safe to probe


def _write_text_atomic(path: Path, text: str) -> None:
    """Write a small file through a temporary name, with normal permissions (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json_atomic(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _remove_leftovers(output: Path) -> None:
    """Remove hidden temporary files an interrupted earlier run left next to this output."""
    for leftover in output.parent.glob(f".{output.name}.geolift-tmp-*"):
        try:
            leftover.unlink()
            log.info("Removed %s, left over from an interrupted run.", leftover.name)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Settings, events, results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs (not what it computes, except ``torch_threads``, which is hashed)."""

    torch_threads: int = 1  # torch threads in every task; fixes the fit's floating-point result
    retries: int = 2  # resubmissions per task after a retryable failure
    force: bool = False  # redo jobs even when their sidecar matches
    pixels_per_task: int = 512 * 512  # output pixels per tile task; scenes up to this size are one task
    max_active_jobs: int | None = None  # jobs in flight at once (writer threads); None: 2 x worker threads + 1
    tasks_ahead: int | None = None  # tile tasks submitted ahead of the writer per job; None: worker threads

    def __post_init__(self) -> None:
        if self.torch_threads < 1:
            raise BatchError(f"torch threads must be at least 1, got {self.torch_threads}.")
        if self.retries < 0:
            raise BatchError(f"retries must be 0 or more, got {self.retries}.")
        if self.pixels_per_task < 1:
            raise BatchError(f"pixels per task must be at least 1, got {self.pixels_per_task}.")


@dataclass(frozen=True)
class JobEvent:
    """Progress of one job: ``stage`` is queued, read, train, write, retry, done, skipped or failed."""

    job: str
    stage: str
    done: int = 0
    total: int = 0
    message: str = ""


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
        """Write ``batch_report.json`` and ``batch_report.csv`` into ``outdir`` (atomically)."""
        outdir = Path(outdir)
        json_path, csv_path = outdir / REPORT_JSON, outdir / REPORT_CSV
        _write_json_atomic(json_path, self.to_dict())
        buffer = _stdio.StringIO()
        columns = [f.name for f in JobResult.__dataclass_fields__.values()]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            writer.writerow(asdict(r) | {"seconds": f"{r.seconds:.2f}"})
        _write_text_atomic(csv_path, buffer.getvalue())
        return json_path, csv_path


def _result(job: BatchJob, status: str, reason: str = "", seconds: float = 0.0, attempts: int = 0) -> JobResult:
    return JobResult(job=job.name, hsi=job.hsi, msi=";".join(job.msi), output=job.output, status=status,
                     reason=reason, seconds=round(seconds, 3), attempts=attempts)


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed task may succeed if run again (its worker died, memory, I/O), unlike input errors."""
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    if isinstance(exc, GeoliftError):
        return False
    if isinstance(exc, (KilledWorker, MemoryError, OSError, CommClosedError)):
        return True
    return isinstance(exc, RuntimeError) and "memory" in str(exc).lower()  # e.g. torch's allocator


def describe_failure(exc: BaseException) -> str:
    """One line saying why a job failed, for the report."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        worker = getattr(getattr(exc, "last_worker", None), "address", "a worker")
        return f"the worker running it ({worker}) died (killed, crashed or out of memory)"
    if isinstance(exc, GeoliftError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedJob:
    """What a prepare task returns: the fitted plan, plus every block when the scene is small."""

    plan: FusionPlan
    blocks: list[tuple[Any, Any]] | None  # [(block, msi_block)] in window order, or None: tile tasks predict


class _TaskLogForwarder(logging.Handler):
    """Send this task thread's geolift log records to the client as Dask events (tagged with the job)."""

    def __init__(self, worker, topic: str, job: str):
        super().__init__(logging.INFO)
        self.worker, self.topic, self.job = worker, topic, job
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            self.worker.log_event(self.topic, {"job": self.job, "kind": "log", "level": record.levelno,
                                               "message": self.format(record)})
        except Exception:  # logging must never break the task
            pass


@contextmanager
def _task_context(job: str, torch_threads: int, topic: str | None) -> Iterator[Callable[[int, int, str], None] | None]:
    """Pin torch's threads, forward log lines and yield a (throttled) progress callback for one task."""
    import torch

    torch.set_num_threads(int(torch_threads))
    worker = None
    if topic:
        try:
            from distributed import get_worker

            worker = get_worker()
        except ValueError:  # not running on a Dask worker (e.g. called directly)
            worker = None
    if worker is None:
        yield None
        return
    handler = _TaskLogForwarder(worker, topic, job)
    geolift_log = logging.getLogger("geolift")
    if geolift_log.getEffectiveLevel() > logging.INFO:
        geolift_log.setLevel(logging.INFO)
    geolift_log.addHandler(handler)
    last = {"stage": "", "fraction": -1.0, "time": 0.0}

    def progress(done: int, total: int, stage: str) -> None:
        fraction = done / total if total else 1.0
        now = time.monotonic()
        if stage == last["stage"] and fraction < 1.0 and fraction - last["fraction"] < 0.05 and now - last["time"] < 2:
            return
        last.update(stage=stage, fraction=fraction, time=now)
        try:
            worker.log_event(topic, {"job": job, "kind": "progress", "stage": stage, "done": int(done),
                                     "total": int(total)})
        except Exception:
            pass

    try:
        yield progress
    except Exception as exc:
        if not isinstance(exc, GeoliftError):  # a bug or a system error: keep its traceback in the log
            log.warning("Unexpected %s in a task:", type(exc).__name__, exc_info=True)
        raise
    finally:
        geolift_log.removeHandler(handler)


def _portable(exc: BaseException) -> BaseException:
    """The same error without its chained causes, so it crosses to the client with its class intact.

    Dask pickles a failed task's exception together with its ``__cause__``/``__context__``; when
    one of those does not pickle (GDAL errors from rasterio, for instance) Dask falls back to a
    bare ``Exception(repr)`` and the class, which decides retry or not, is lost.
    """
    try:
        clone = type(exc)(*exc.args)
        pickle.loads(pickle.dumps(clone))
        return clone
    except Exception:
        for kind in (GeoliftError, OSError, MemoryError):
            if isinstance(exc, kind):
                return kind(str(exc))
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _with_portable_errors(task: Callable) -> Callable:
    """Run a Dask task so that its failure reaches the client as a picklable, cause-free error."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside this block (no __context__)
            error = _portable(exc)
        raise error

    return run


@_with_portable_errors
def _prepare_task(job: BatchJob, torch_threads: int, inline_pixels: int, topic: str | None) -> PreparedJob:
    """Dask task: read, align and fit one job; predict it too when the output is small."""
    with _task_context(job.name, torch_threads, topic) as progress:
        plan = prepare_fusion(job.hsi, job.msi_source, replace(job.options, overwrite=True), progress=progress)
        grid = plan.grid
        if grid.width * grid.height > inline_pixels:
            return PreparedJob(plan, None)
        blocks = [plan.predict_window(w) for w in block_windows(grid.width, grid.height, job.options.tile_size)]
        return PreparedJob(plan, blocks)


@_with_portable_errors
def _predict_task(prepared: PreparedJob, windows: list, torch_threads: int, job: str,
                  topic: str | None) -> list[tuple[Any, Any]]:
    """Dask task: predict a run of output windows of one scene with its fitted plan."""
    with _task_context(job, torch_threads, topic):
        return [prepared.plan.predict_window(w) for w in windows]


# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_worker_count(torch_threads: int = 1) -> int:
    """One single-threaded worker process per ``torch_threads`` usable cores (at least one)."""
    return max(1, _usable_cores() // max(1, int(torch_threads)))


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
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
    except Exception:
        return None
    if "dashboard" not in services:
        return None
    if getattr(client, "cluster", None) is not None and not _has_bokeh():
        return None  # a local scheduler without bokeh serves only a "bokeh is missing" page
    return client.dashboard_link


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------


class _Tries:
    """The most tries any one task of a job needed (what the report calls its attempts)."""

    def __init__(self) -> None:
        self.most = 0

    def record(self, tries: int) -> None:
        self.most = max(self.most, tries)


class _PlanWithBlocks:
    """A FusionPlan whose ``predict_window`` returns blocks computed elsewhere, in write order.

    :func:`geolift.fuse.write_fusion` takes it in place of the plan, so a batch output goes through
    exactly the code path of ``geolift fuse``.
    """

    def __init__(self, plan: FusionPlan, fetch: Callable[[Any], tuple[Any, Any]]):
        self._plan = plan
        self._fetch = fetch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plan, name)

    def predict_window(self, window):
        return self._fetch(window)


def _window_key(window) -> tuple[int, int, int, int]:
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


class _Runner:
    """Runs jobs on a Dask client: one client thread per active job, tasks on the workers."""

    def __init__(self, client, settings: BatchSettings, emit: Callable[[JobEvent], None], topic: str, threads: int):
        self.client = client
        self.settings = settings
        self.emit = emit
        self.topic = topic
        self.ahead = settings.tasks_ahead or max(2, threads)
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
            except Exception:
                pass

    def _await(self, future, resubmit: Callable[[], Any], tries: _Tries, job: BatchJob, what: str):
        """The future's result; retryable failures are resubmitted up to ``retries`` times."""
        attempt = 1
        while True:
            try:
                value = future.result()
                tries.record(attempt)
                return future, value
            except Exception as exc:
                tries.record(attempt)
                if self.stopping.is_set() or not is_retryable(exc) or attempt > self.settings.retries:
                    self._forget([future])
                    future.release()
                    raise
                reason = describe_failure(exc)
                log.warning("%s: %s failed (%s); retrying (%d of %d).", job.name, what, reason, attempt,
                            self.settings.retries)
                self.emit(JobEvent(job.name, "retry", attempt, self.settings.retries, reason))
                self._forget([future])
                future.release()
                attempt += 1
                future = self._track(resubmit())

    # -- one job -------------------------------------------------------------------------------
    def run(self, job: BatchJob, fingerprint: dict[str, Any], digest: str) -> JobResult:
        started = time.perf_counter()
        tries = _Tries()
        futures: list = []
        try:
            if self.stopping.is_set():
                raise _Interrupted()
            output = Path(job.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            check_output_path(output, overwrite=True, inputs=[i for i in job.inputs if not is_remote(i)])
            _remove_leftovers(output)
            log.info("%s: started (%s + %s).", job.name, Path(job.hsi).name, ", ".join(Path(m).name for m in job.msi))
            self.emit(JobEvent(job.name, "read", 0, 1))

            token = f"{re.sub(r'[^A-Za-z0-9_]+', '_', job.name)[:40]}-{digest[:8]}"

            def submit_prepare():
                return self.client.submit(
                    _prepare_task, job, self.settings.torch_threads, self.settings.pixels_per_task, self.topic,
                    key=f"geolift_prepare-{token}-{uuid.uuid4().hex[:8]}", priority=0, pure=False)

            plan_future, prepared = self._await(self._track(submit_prepare()), submit_prepare, tries, job, "training")
            plan = prepared.plan
            if prepared.blocks is None:
                futures.append(plan_future)  # tile tasks need the plan on the cluster
            else:
                self._forget([plan_future])
                plan_future.release()
            windows = list(block_windows(plan.grid.width, plan.grid.height, job.options.tile_size))
            if prepared.blocks is not None:
                by_window = dict(zip(map(_window_key, windows), prepared.blocks))
                fetch = lambda window: by_window.pop(_window_key(window))  # noqa: E731
                feed = None
            else:
                feed = _TileFeed(self, job, token, plan_future, windows, tries)
                fetch = feed.block
                log.info("%s: %d output windows in %d tile tasks.", job.name, len(windows), len(feed.groups))
            try:
                write_fusion(_PlanWithBlocks(plan, fetch), output,
                             progress=lambda d, t, s: self.emit(JobEvent(job.name, "write", d, t)),
                             inputs=job.inputs)
            finally:
                if feed is not None:
                    feed.close()
            seconds = time.perf_counter() - started
            _write_json_atomic(sidecar_path(output), {
                "format": SIDECAR_FORMAT, "job": job.name, "hash": digest, "fingerprint": fingerprint,
                "finished_utc": _utc_now(), "seconds": round(seconds, 3), "attempts": max(tries.most, 1),
            })
            log.info("%s %s: done in %.1f s -> %s", self._count(), job.name, seconds, output)
            self.emit(JobEvent(job.name, "done", 1, 1))
            return _result(job, "done", seconds=seconds, attempts=max(tries.most, 1))
        except Exception as exc:
            seconds = time.perf_counter() - started
            reason = "interrupted" if self.stopping.is_set() else describe_failure(exc)
            if not isinstance(exc, (GeoliftError, _Interrupted)) and not self.stopping.is_set():
                log.debug("%s failed", job.name, exc_info=True)
            log.error("%s %s: failed after %d attempt(s): %s", self._count(), job.name, max(tries.most, 1), reason)
            self.emit(JobEvent(job.name, "failed", 0, 0, reason))
            return _result(job, "failed", reason, seconds, max(tries.most, 1))
        finally:
            self._forget(futures)
            for f in futures:
                f.release()


class _Interrupted(Exception):
    pass


class _TileFeed:
    """Hands one job's output blocks to the writer in window order, keeping a few tile tasks ahead."""

    def __init__(self, runner: _Runner, job: BatchJob, token: str, plan_future, windows: list, tries: _Tries):
        self.runner, self.job, self.token, self.plan_future, self.tries = runner, job, token, plan_future, tries
        tile = job.options.tile_size
        per_task = max(1, runner.settings.pixels_per_task // (tile * tile))
        self.groups = [windows[i:i + per_task] for i in range(0, len(windows), per_task)]
        self.where = {_window_key(w): (g, k) for g, group in enumerate(self.groups) for k, w in enumerate(group)}
        self.futures: dict[int, Any] = {}
        self.submitted = 0
        self.current: tuple[int, list] | None = None

    def _submit(self, g: int):
        runner = self.runner
        return runner._track(runner.client.submit(
            _predict_task, self.plan_future, self.groups[g], runner.settings.torch_threads, self.job.name,
            runner.topic, key=f"geolift_tiles-{self.token}-{g}-{uuid.uuid4().hex[:8]}", priority=1, pure=False))

    def _fill(self, upto: int) -> None:
        while self.submitted < min(upto, len(self.groups)):
            self.futures[self.submitted] = self._submit(self.submitted)
            self.submitted += 1

    def block(self, window):
        g, k = self.where[_window_key(window)]
        if self.current is None or self.current[0] != g:
            self._fill(g + 1 + self.runner.ahead)
            future = self.futures.pop(g)
            future, blocks = self.runner._await(future, lambda: self._submit(g), self.tries, self.job,
                                                f"tile task {g + 1}/{len(self.groups)}")
            self.runner._forget([future])
            future.release()
            self.current = (g, blocks)
        return self.current[1][k]

    def close(self) -> None:
        """Cancel tile tasks the writer will not consume (the job failed or was interrupted)."""
        left = list(self.futures.values())
        self.futures.clear()
        self.runner._forget(left)
        if left:
            try:
                self.runner.client.cancel(left)
            except Exception:
                pass


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
        fingerprint = job_fingerprint(job, settings.torch_threads)
        digest = job_hash(fingerprint)
        if not settings.force and is_complete(job, digest):
            results[job.name] = _result(job, "skipped", "output is up to date")
            emit(JobEvent(job.name, "skipped", 1, 1))
        else:
            todo.append((job, fingerprint, digest))
            emit(JobEvent(job.name, "queued"))
    log.info("Batch: %d job(s), %d up to date, %d to run.", len(jobs), len(jobs) - len(todo), len(todo))

    workers = client.scheduler_info().get("workers", {})
    threads = sum(w.get("nthreads", 1) for w in workers.values()) or 1
    scheduler = getattr(client.scheduler, "address", "") if client.scheduler is not None else ""
    topic = f"geolift-batch-{uuid.uuid4().hex}"
    runner = _Runner(client, settings, emit, topic, threads)
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
                    results[job.name] = future.result() if finished else _result(job, "failed", "interrupted")
        finally:
            pool.shutdown(wait=True)
            try:
                client.unsubscribe_topic(topic)
            except Exception:
                pass

    report = BatchReport(
        results=[results[j.name] for j in jobs], started_utc=started_utc, seconds=time.perf_counter() - started,
        scheduler=str(scheduler), workers=len(workers), interrupted=interrupted,
    )
    log.info("Batch finished in %.1f s: %d done, %d skipped, %d failed.", report.seconds, report.count("done"),
             report.count("skipped"), report.count("failed"))
    return report
