"""EMIT Level 2A surface reflectance (NASA JPL, on the ISS): the reflectance netCDF, orthorectified through its GLT.

What is read (EMIT Data Product User Guide, L2A reflectance and mask; file names
``EMIT_L2A_RFL_<version>_<YYYYMMDDTHHMMSS>_<orbit>_<scene>.nc``). A netCDF-4 file is an HDF5 file: the cube and the
small metadata are read with h5py, one hyperslab per window (GDAL's netCDF driver shows the cube band by band and
reads every chunk once per band, 14 times slower here; its raster view also has no string variables); the lookup
tables go through GDAL's netCDF driver:

* ``reflectance`` (downtrack, crosstrack, bands), float32, fill -9999: the cube in swath geometry.
* ``sensor_band_parameters/wavelengths`` and ``fwhm`` (nm); ``good_wavelengths`` = 0 marks a band bad (the
  water-vapour bands).
* ``location/glt_x`` and ``glt_y``: for each pixel of the map grid, the 1-based crosstrack column and downtrack row
  it takes (0: outside the swath). The map grid is the global attributes ``geotransform`` (GDAL order) and
  ``spatial_ref`` (WKT; EPSG:4326 in delivered products). geolift places pixels exactly as the table says
  (nearest neighbour, nothing interpolated), window by window, with no orthorectified copy on disk.
* ``time_coverage_start``: the acquisition time.
* The L2A mask file beside it (``EMIT_L2A_MASK_<version>_<same time, orbit, scene>.nc``), where given: its ``mask``
  bands are chosen by name (``sensor_band_parameters/mask_bands``, which differ between versions): "Cloud flag",
  "Cirrus flag", "Dilated Cloud Flag" and "Spacecraft Flag" are masks (non-zero, including its -9999 "bad data",
  reads as nodata). "Water flag" (a land-cover class), "AOD550", "H2O" and the "Aggregate Flag" (which includes
  water) are not. Without a mask file, the log says that clouds are not masked.

The product is read from its ``.nc`` file, a folder holding one granule, or a ZIP of the files (``/vsizip/``).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.cubes import HDF5Cube, LookupTableGrid
from geolift.io.products.folders import local_path, zip_members
from geolift.io.read import MaskLayer, Scene, _FileBands, _open_raster

__all__ = ["find", "open"]

log = logging.getLogger("geolift")

_REFLECTANCE = re.compile(r"^EMIT_L2A_RFL_\d{3}_(\d{8}T\d{6}_\d+_\d+)\.nc$", re.IGNORECASE)
_MASK = re.compile(r"^EMIT_L2A_MASK_\d{3}_(\d{8}T\d{6}_\d+_\d+)\.nc$", re.IGNORECASE)
FILL = -9999.0
#: EMIT's arrays are stored top row first, as its geotransform and GLT assume; GDAL's netCDF driver would otherwise
#: flip a variable that has no coordinate axis, taking it for a bottom-up CF grid.
TOP_DOWN = (("GDAL_NETCDF_BOTTOMUP", "NO"),)


class _UnindexedDimensionNotice(logging.Filter):
    """Drop GDAL's notice that a netCDF dimension has no coordinate variable: every EMIT file's ``bands`` has none,
    and the notice (a rasterio log warning on each open) tells a user nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No 1D variable is indexed by dimension" not in record.getMessage()


logging.getLogger("rasterio._env").addFilter(_UnindexedDimensionNotice())
#: Mask-file bands that mask (matched by name, case-insensitively) -> the name geolift reports.
MASK_FLAGS = {"cloud flag": "cloud", "cirrus flag": "cirrus", "dilated cloud flag": "dilated cloud",
              "spacecraft flag": "spacecraft"}


@dataclass(frozen=True)
class Found:
    """An EMIT granule: GDAL paths of its reflectance file and mask file, and how h5py reaches them."""

    name: str
    reflectance: str
    mask: str | None
    archive: str | None = None  # the ZIP, when the granule is one; then the paths are members of it
    members: tuple[str, str | None] = ("", None)


def find(path: PathLike) -> Found | None:
    """The granule at ``path`` (its reflectance ``.nc``, a folder holding one, or a ZIP of its files), or None."""
    p = local_path(path)
    if p is None:
        return None
    names = zip_members(p)
    if names is not None:
        found = _granule(names, p)
        if found is None:
            return None
        name, rfl, mask = found
        prefix = f"/vsizip/{os.path.abspath(p)}"
        return Found(name, f"{prefix}/{rfl}", f"{prefix}/{mask}" if mask else None, os.path.abspath(p), (rfl, mask))
    if p.is_file() and _REFLECTANCE.match(p.name):
        siblings = [c.name for c in p.parent.iterdir() if c.is_file()]
        mask = _companion_mask(siblings, p.name)
        return Found(p.stem, str(p.resolve()), str((p.parent / mask).resolve()) if mask else None)
    if p.is_dir():
        found = _granule([c.name for c in p.iterdir() if c.is_file()], p)
        if found is not None:
            name, rfl, mask = found
            return Found(name, str((p / rfl).resolve()), str((p / mask).resolve()) if mask else None)
    return None


def _granule(names: list[str], where: Path) -> tuple[str, str, str | None] | None:
    """The one reflectance file among ``names`` and its mask file; several granules in one place are refused."""
    reflectance = sorted(n for n in names if _REFLECTANCE.match(PurePosixPath(n).name))
    if not reflectance:
        return None
    if len(reflectance) > 1:
        raise InputError(f"{where} holds {len(reflectance)} EMIT reflectance granules ("
                         f"{', '.join(PurePosixPath(n).name for n in reflectance[:3])}); give one granule's .nc file.")
    rfl = reflectance[0]
    folder = PurePosixPath(rfl).parent
    mask = _companion_mask([n for n in names if PurePosixPath(n).parent == folder], PurePosixPath(rfl).name)
    return PurePosixPath(rfl).stem, rfl, (str(folder / mask) if str(folder) != "." else mask) if mask else None


def _companion_mask(names: list[str], reflectance_name: str) -> str | None:
    granule = _REFLECTANCE.match(reflectance_name).group(1)
    masks = sorted(PurePosixPath(n).name for n in names
                   if (m := _MASK.match(PurePosixPath(n).name)) and m.group(1) == granule)
    return masks[-1] if masks else None  # the newest version when several are kept


@contextmanager
def _hdf5(found: Found, which: int) -> Iterator:
    """The reflectance (0) or mask (1) file opened with h5py, read in place inside a ZIP."""
    import h5py

    path = (found.reflectance, found.mask)[which]
    try:
        if found.archive is not None:
            with zipfile.ZipFile(found.archive) as archive, archive.open(found.members[which]) as member, \
                    h5py.File(member, "r") as f:
                yield f
        else:
            with h5py.File(path, "r") as f:
                yield f
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"Cannot read the EMIT file {path}; it may be truncated ({exc}).") from None


def _array(f, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(f[key][()])
    except KeyError:
        raise MetadataError(f"{where} has no {key}; it is not an EMIT L2A file, or it is damaged.") from None


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value
    return value.decode() if isinstance(value, bytes) else str(value)


def open(found: Found, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The granule as a :class:`Scene` on its map grid: reflectance, band facts, masks, identity."""
    where = found.reflectance
    with _hdf5(found, 0) as f:
        wavelengths = _array(f, "sensor_band_parameters/wavelengths", where).astype(np.float64)
        fwhm = _array(f, "sensor_band_parameters/fwhm", where).astype(np.float64)
        good = (_array(f, "sensor_band_parameters/good_wavelengths", where) != 0
                if "sensor_band_parameters/good_wavelengths" in f else np.ones(wavelengths.size, bool))
        try:
            geotransform = [float(v) for v in np.ravel(f.attrs["geotransform"])]
            spatial_ref = _text(f.attrs["spatial_ref"])
        except KeyError as exc:
            raise MetadataError(f"{where} lacks the global attribute {exc}; the map grid is unknown.") from None
        start = _text(f.attrs.get("time_coverage_start", ""))
    if not wavelengths.size == fwhm.size == good.size:
        raise MetadataError(f"{where}: {wavelengths.size} wavelengths, {fwhm.size} FWHM, {good.size} good flags.")
    try:
        crs = CRS.from_user_input(spatial_ref)
    except CRSError as exc:
        raise MetadataError(f"{where}: spatial_ref is not a CRS ({exc}).") from None
    if len(geotransform) != 6:
        raise MetadataError(f"{where}: geotransform has {len(geotransform)} numbers, not 6.")
    subdatasets = _subdatasets(found.reflectance)
    cube = _variable(subdatasets, "reflectance", where)
    glt_x, glt_y = _variable(subdatasets, "location/glt_x", where), _variable(subdatasets, "location/glt_y", where)
    swath = _cube(found, 0, "reflectance", wavelengths.size)
    with _open_raster(glt_x) as ds:
        height, width = ds.height, ds.width
    count = wavelengths.size
    source = LookupTableGrid(swath, glt_x, glt_y, FILL, TOP_DOWN)
    names = tuple(f"{w:.2f} nm" for w in wavelengths)
    scene = Scene(paths=(cube,), crs=crs, transform=Affine.from_gdal(*geotransform), width=width, height=height,
                  count=count, dtypes=("float32",) * count, nodata=(FILL,) * count, scales=np.ones(count),
                  offsets=np.zeros(count), wavelengths_nm=wavelengths, fwhm_nm=fwhm, good_bands=good,
                  band_names=names, named_bands=(False,) * count, descriptions=names,
                  tags={"product_name": found.name, "sensor": "EMIT", "processing_level": "L2A",
                        "acquisition_time": start.strip()},
                  wavelength_source="EMIT sensor_band_parameters",
                  files=(_FileBands(cube, tuple(range(1, count + 1)), True, False, "bilinear", source),),
                  masks=_masks(found, glt_x, glt_y))
    if found.mask is None:
        log.info("EMIT %s: no L2A mask file (EMIT_L2A_MASK_…) beside it, so clouds are not masked.", found.name)
    scene = select_detectors(scene, ["VNIR"] * count, overlap)  # one detector: only checks the choice
    return finish(scene, label="EMIT", check_data=check_data)


def _masks(found: Found, glt_x: str, glt_y: str) -> tuple[MaskLayer, ...]:
    if found.mask is None:
        return ()
    with _hdf5(found, 1) as f:
        labels = [_text(v).strip() for v in _array(f, "sensor_band_parameters/mask_bands", found.mask)]
    wanted = [(k + 1, MASK_FLAGS[label.lower()]) for k, label in enumerate(labels) if label.lower() in MASK_FLAGS]
    if not wanted:
        raise MetadataError(f"{found.mask} has none of the mask bands geolift uses ({', '.join(MASK_FLAGS)}); it "
                            f"has {', '.join(labels)}.")
    path = _variable(_subdatasets(found.mask), "mask", found.mask)
    swath = _cube(found, 1, "mask", len(labels))
    source = LookupTableGrid(swath, glt_x, glt_y, 0.0, TOP_DOWN)  # outside the swath: not flagged (nodata there)
    return tuple(MaskLayer(name, path, source=source, bands=(band,)) for band, name in wanted)


def _subdatasets(path: str) -> list[str]:
    with _open_raster(path) as ds:
        return list(ds.subdatasets)


def _variable(subdatasets: list[str], name: str, where: str) -> str:
    """The GDAL path of netCDF variable ``name`` (``group/variable``) among a file's subdatasets."""
    suffixes = (f":{name}", f":/{name}")
    for sub in subdatasets:
        if sub.endswith(suffixes):
            return sub
    raise MetadataError(f"{where} has no variable {name}; it is not an EMIT L2A file, or it is damaged.")


def _cube(found: Found, which: int, variable: str, count: int) -> HDF5Cube:
    """The (downtrack, crosstrack, bands) variable of the reflectance (0) or mask (1) file, checked, for h5py."""
    where = (found.reflectance, found.mask)[which]
    with _hdf5(found, which) as f:
        shape = f[variable].shape if variable in f else None
    if shape is None or len(shape) != 3 or shape[2] != count:
        raise MetadataError(f"{where}: {variable} is {shape}, not (downtrack, crosstrack, {count} bands).")
    if found.archive is not None:
        return HDF5Cube(found.members[which], variable, count, found.archive)
    return HDF5Cube(where, variable, count)
