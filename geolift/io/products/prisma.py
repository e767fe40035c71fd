"""PRISMA Level 2D products: the map-projected surface reflectance in one HDF-EOS5 file (``PRS_L2D_STD_….he5``).

What is read (ASI, PRISMA Products Specification Document; facts checked against the EnMAP-Box "Import PRISMA L2D
product" algorithm), all through GDAL's HDF5 driver, also inside the delivered ZIP through ``/vsizip/``:

* ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` and ``SWIR_Cube``: 16-bit DN stored ``(rows, bands, cols)``,
  bands in decreasing wavelength. Reflectance = ``L2Scale<Det>Min + DN · (L2Scale<Det>Max − L2Scale<Det>Min) /
  65535`` (global attributes ``L2ScaleVnirMin`` …). DN 0 is no data (outside the swath).
* Global attributes ``List_Cw_Vnir``/``List_Fwhm_Vnir`` (and ``…Swir``), nm; a centre of 0 marks a channel that does
  not exist and is skipped; ``List_Cw_<Det>_Flags`` = 0 marks a band bad. Bands are presented in increasing
  wavelength within each detector.
* The grid: ``Epsg_Code`` and the pixel-centre corners ``Product_ULcorner_easting``/``…northing`` and
  ``Product_LRcorner_…``, with 30 m pixels (checked against the cube's size).
* ``VNIR_PIXEL_L2_ERR_MATRIX``/``SWIR_…`` (same layout as the cubes): a pixel with code 1 (invalid L1 pixel) in any
  band is masked. Codes 2 and 4 (negative or saturated atmospheric correction) concern single bands and are not.
* ``Cloud_Mask``/``SunGlint_Mask`` where a product has them on the L2D grid (the specification puts them in L1,
  in swath geometry, where geolift cannot use them).
* ``Product_StartTime``: the acquisition time.

The VNIR and SWIR detectors overlap (about 920-1010 nm): ``overlap`` keeps both (the default), or only one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.cubes import InterleavedCube, gdal_layout
from geolift.io.products.folders import local_path, zip_members
from geolift.io.read import MaskLayer, Scene, _FileBands, _open_raster

__all__ = ["find", "open"]


_FILE = re.compile(r"PRS_L(1|2[BCD])_[A-Z]{3}_\d{14}_\d{14}_\d{4}\.he5$", re.IGNORECASE)
_FIELDS = "/PRS_L2D_HCO/Data_Fields/"  # as GDAL names the subdatasets (spaces become underscores)
PIXEL_SIZE_M = 30.0  # the hyperspectral cubes' grid (PRISMA PSD)
DN_RANGE = 65535.0
DETECTORS = ("VNIR", "SWIR")


@dataclass(frozen=True)
class Found:
    """A PRISMA file: its GDAL path (``/vsizip/…`` inside a ZIP) and its product name and level."""

    name: str
    path: str
    level: str


def find(path: PathLike) -> Found | None:
    """The PRISMA product at ``path`` (its ``.he5`` file or the delivered ZIP holding one), or None."""
    p = local_path(path)
    if p is None:
        return None
    names = zip_members(p)
    if names is not None:
        members = [n for n in names if _FILE.search(Path(n).name)]
        if not members:
            return None
        if len(members) > 1:
            raise InputError(f"{p} holds {len(members)} PRISMA files ({', '.join(members[:3])}); unpack one or give "
                             "its own ZIP.")
        return _found(members[0], f"/vsizip/{os.path.abspath(p)}/{members[0]}")
    if p.is_file() and _FILE.search(p.name):
        return _found(p.name, str(p.resolve()))
    return None


def _found(name: str, path: str) -> Found:
    stem = Path(name).stem
    return Found(stem, path, "L" + _FILE.search(Path(name).name).group(1).upper())


def _floats(attrs: dict[str, str], key: str, where: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in attrs[key].replace(",", " ").split()], dtype=np.float64)
    except KeyError:
        raise MetadataError(f"{where} lacks the global attribute {key}; it is not a PRISMA L2D product, or it is "
                            "damaged.") from None
    except ValueError:
        raise MetadataError(f"{where}: the attribute {key} is not a list of numbers.") from None


def _number(attrs: dict[str, str], key: str, where: str) -> float:
    values = _floats(attrs, key, where)
    if values.size != 1:
        raise MetadataError(f"{where}: the attribute {key} should be one number, not {values.size}.")
    return float(values[0])


def open(found: Found, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The L2D product as a :class:`Scene`: both cubes in reflectance, map grid, masks, identity."""
    if found.level != "L2D":
        raise InputError(f"{found.name} is a PRISMA {found.level} product, in sensor geometry; geolift reads the "
                         "map-projected L2D product.")
    try:
        with _open_raster(found.path) as ds:
            attrs, subdatasets = ds.tags(), list(ds.subdatasets)
    except InputError as exc:
        raise InputError(f"Cannot read the PRISMA file {found.path}; it may be truncated ({exc}).") from None
    where = found.path
    grid, crs, transform = None, None, None
    files, masks, detectors = [], [], []
    wavelengths, fwhm, good, scales, offsets = [], [], [], [], []
    for det in DETECTORS:
        cube = _subdataset(subdatasets, f"{det}_Cube", where)
        centres = _floats(attrs, f"List_Cw_{det.title()}", where)
        widths = _floats(attrs, f"List_Fwhm_{det.title()}", where)
        flags = (_floats(attrs, f"List_Cw_{det.title()}_Flags", where) if f"List_Cw_{det.title()}_Flags" in attrs
                 else np.ones_like(centres))
        if not centres.size == widths.size == flags.size:
            raise MetadataError(f"{where}: {det} has {centres.size} centres, {widths.size} FWHM and {flags.size} "
                                "flags.")
        shape, dtype = _shape(cube)
        try:
            layout = gdal_layout(shape, centres.size)
        except ValueError as exc:
            raise MetadataError(f"{where}: the {det} cube does not match its {centres.size} listed bands ({exc}).") \
                from None
        if layout == "bip":
            raise MetadataError(f"{where}: the {det} cube is stored band-interleaved by pixel; a PRISMA L2D cube is "
                                "by line.")
        rows, cols = (shape[1], shape[2]) if layout == "bsq" else (shape[0], shape[2])
        if grid is None:
            grid = (rows, cols)
            crs, transform = _georeferencing(attrs, rows, cols, where)
        elif grid != (rows, cols):
            raise MetadataError(f"{where}: the VNIR cube is {grid[0]} x {grid[1]} pixels but the SWIR cube "
                                f"{rows} x {cols}.")
        exists = np.flatnonzero(centres > 0)
        order = exists[np.argsort(centres[exists], kind="stable")]
        source = InterleavedCube(cube, centres.size) if layout == "bil" else None
        files.append(_FileBands(cube, tuple(int(k) + 1 for k in order), True, False, "bilinear", source))
        low, high = _number(attrs, f"L2Scale{det.title()}Min", where), _number(attrs, f"L2Scale{det.title()}Max", where)
        wavelengths.append(centres[order])
        fwhm.append(widths[order])
        good.append(flags[order] == 1)
        scales.append(np.full(order.size, (high - low) / DN_RANGE))
        offsets.append(np.full(order.size, low))
        detectors += [det] * order.size
        errors = _subdataset(subdatasets, f"{det}_PIXEL_L2_ERR_MATRIX", where, required=False)
        if errors is not None:
            masks.append(MaskLayer(f"invalid {det} pixel", errors, bits=1,
                                   source=InterleavedCube(errors, centres.size) if layout == "bil" else None))
    for field, name in (("Cloud_Mask", "cloud"), ("SunGlint_Mask", "sun glint")):
        path = _subdataset(subdatasets, field, where, required=False)
        if path is not None and _shape(path)[0][1:] == grid:
            masks.append(MaskLayer(name, path, bits=1))
    count = sum(len(f.bands) for f in files)
    names = tuple(f"{det} {wl:.1f} nm" for det, wl in zip(detectors, np.concatenate(wavelengths)))
    tags = {"product_name": found.name, "sensor": "PRISMA", "processing_level": found.level,
            "acquisition_time": attrs.get("Product_StartTime", "").strip()}
    scene = Scene(paths=tuple(f.path for f in files), crs=crs, transform=transform, width=grid[1], height=grid[0],
                  count=count, dtypes=(dtype,) * count, nodata=(0.0,) * count, scales=np.concatenate(scales),
                  offsets=np.concatenate(offsets), wavelengths_nm=np.concatenate(wavelengths),
                  fwhm_nm=np.concatenate(fwhm), good_bands=np.concatenate(good), band_names=names,
                  named_bands=(False,) * count, descriptions=names, tags=tags,
                  wavelength_source="PRISMA L2D attributes", files=tuple(files), masks=tuple(masks))
    scene = select_detectors(scene, detectors, overlap)
    return finish(scene, label="PRISMA", check_data=check_data)


def _subdataset(subdatasets: list[str], field: str, where: str, *, required: bool = True) -> str | None:
    for name in subdatasets:
        if name.endswith(_FIELDS + field):
            return name
    if required:
        raise MetadataError(f"{where} has no HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/{field}; it is not a PRISMA L2D "
                            "product, or it is damaged.")
    return None


def _shape(path: str) -> tuple[tuple[int, int, int], str]:
    try:
        with _open_raster(path) as ds:
            return (ds.count, ds.height, ds.width), ds.dtypes[0]
    except RasterioError as exc:
        raise InputError(f"Cannot read {path} ({exc}).") from None


def _georeferencing(attrs: dict[str, str], rows: int, cols: int, where: str) -> tuple[CRS, Affine]:
    """The grid from the EPSG code and the pixel-centre corners, checked against 30 m pixels and the cube size."""
    try:
        crs = CRS.from_epsg(int(_number(attrs, "Epsg_Code", where)))
    except CRSError as exc:
        raise MetadataError(f"{where}: Epsg_Code is not a known EPSG code ({exc}).") from None
    west, north = _number(attrs, "Product_ULcorner_easting", where), _number(attrs, "Product_ULcorner_northing", where)
    east, south = _number(attrs, "Product_LRcorner_easting", where), _number(attrs, "Product_LRcorner_northing", where)
    expected = (PIXEL_SIZE_M * (cols - 1), PIXEL_SIZE_M * (rows - 1))
    if abs(east - west - expected[0]) > PIXEL_SIZE_M / 2 or abs(north - south - expected[1]) > PIXEL_SIZE_M / 2:
        raise MetadataError(f"{where}: the corners (UL {west}, {north}; LR {east}, {south}) do not span a "
                            f"{rows} x {cols} grid of {PIXEL_SIZE_M:g} m pixels.")
    half = PIXEL_SIZE_M / 2
    return crs, Affine(PIXEL_SIZE_M, 0.0, west - half, 0.0, -PIXEL_SIZE_M, north + half)
