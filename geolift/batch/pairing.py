"""Folder pairing: each HSI in one folder matched with an MSI in another, by scene id or footprint overlap."""

from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path
from typing import Any

from rasterio.warp import transform_bounds

from geolift.batch.jobs import BatchJob, check_sensor_bands, job_name, output_folder, sentence
from geolift.errors import BatchError, GeoliftError, SensorError
from geolift.fuse import FuseOptions, default_output_path
from geolift.io import open_scene
from geolift.io.products import is_product

__all__ = ["DATE_PATTERN", "RASTER_SUFFIXES", "days_apart", "pair_folders", "scene_key"]

log = logging.getLogger("geolift")

#: Raster files the folder-pairing mode looks at (ENVI headers are skipped: their data file is listed).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".bsq", ".bil", ".bip", ".dat", ".envi")

#: Default scene id: the first calendar date YYYYMMDD (also YYYY-MM-DD / YYYY_MM_DD) in a file name, alone or as
#: the start of a YYYYMMDDhhmmss time stamp (PRISMA's names).
DATE_PATTERN = re.compile(
    r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?:(?!\d)|(?=\d{6}(?!\d)))"
)


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
    """The rasters of a folder: files with a raster suffix, and products as delivered (folders, ZIPs)."""
    if not folder.is_dir():
        raise BatchError(f"{folder} is not a folder.")
    if is_product(folder):  # its files are one product's layers, not scenes of their own
        raise BatchError(f"{folder} is itself a product; give the folder that holds the products.")
    return sorted(p for p in folder.glob(glob)
                  if (p.is_file() and p.suffix.lower() in RASTER_SUFFIXES) or is_product(p))


def days_apart(hsi: str, msi: str) -> int | None:
    """Days between the two scenes' acquisitions, from the first date in each file or product name; None when
    either name has none."""
    dates = []
    for path in (hsi, msi):
        found = DATE_PATTERN.search(Path(path).name) or DATE_PATTERN.search(Path(path).parent.name)
        if found is None:
            return None
        try:
            dates.append(datetime.date(*(int(g) for g in found.groups())))
        except ValueError:
            return None
    return abs((dates[0] - dates[1]).days)


def _footprint(path: Path) -> tuple[Any, tuple[float, float, float, float]] | None:
    """(CRS, bounds) of a raster from its metadata, or None when it cannot be opened."""
    try:
        scene = open_scene(str(path), check_data=False)
    except GeoliftError as exc:
        log.warning("Pairing: cannot read the footprint of %s (%s)", path.name, exc)
        return None
    return scene.crs, tuple(scene.bounds)


def _overlap_area(a: tuple[Any, tuple], b: tuple[Any, tuple]) -> float:
    """Area of the intersection of two footprints, in the first one's CRS units."""
    crs_a, (ax0, ay0, ax1, ay1) = a
    crs_b, box_b = b
    try:
        bx0, by0, bx1, by1 = box_b if crs_b == crs_a else transform_bounds(crs_b, crs_a, *box_b, densify_pts=21)
    except Exception:  # noqa: BLE001 - a CRS pair with no transformation: no usable overlap
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
    outdir = output_folder(outdir)
    hsi_files = _raster_files(Path(hsi_dir).expanduser(), hsi_glob)
    msi_files = _raster_files(Path(msi_dir).expanduser(), msi_glob)
    if not hsi_files:
        raise BatchError(f"No raster files ({', '.join(RASTER_SUFFIXES)}) match {hsi_glob!r} in {hsi_dir}.")
    if not msi_files:
        raise BatchError(f"No raster files ({', '.join(RASTER_SUFFIXES)}) match {msi_glob!r} in {msi_dir}.")
    try:
        check_sensor_bands(defaults)
    except SensorError as exc:
        raise BatchError(sentence(exc)) from None

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
        jobs.append(BatchJob(name=job_name(output, outdir), hsi=os.path.abspath(hsi),
                             msi=(os.path.abspath(chosen),), output=output, options=defaults))
    if not jobs:
        raise BatchError(f"No HSI in {hsi_dir} could be paired with an MSI in {msi_dir} "
                         "(by scene id or footprint overlap).")
    return jobs, unmatched
