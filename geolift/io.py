"""Reading and writing georeferenced rasters for ``geolift fuse``.

io is the only module that touches raster files. It turns files into float32
band-first arrays with ``NaN`` for nodata and wavelengths in nanometres, and
turns such arrays back into a tiled, compressed GeoTIFF, atomically.

Reading
-------
``open_scene(source, *, require_wavelengths=False, nodata=None, resampling="bilinear",
check_data=True) -> Scene``

``source`` is one raster (GeoTIFF, ENVI, JP2, anything GDAL opens) or a list of
rasters (typically single-band files such as ``T33UUU_..._B02.jp2`` or
``LC08_..._SR_B4.TIF``). An ENVI image may be given by its data file or its
``.hdr``; gzip-compressed ENVI (``file compression = 1``) works because GDAL
reads it. Opening only inspects metadata (plus a cheap decimated look at the
data, see ``check_data``); pixels are read later, window by window, with
``Scene.read``. A ``Scene`` keeps no file open, so it pickles (Dask) and leaks
nothing.

* **Georeferencing** - every file needs a CRS and a real geotransform; missing
  ones (or GCP-only files) raise ``MetadataError``. A missing file or a file GDAL
  cannot read raises ``InputError``; so does a scene with no valid pixel.
* **Band lists** are stacked on the grid of the finest file (smallest pixel
  area, first in the list among equals). Files on that exact grid are read
  directly; the others are warped onto it on the fly with ``resampling``
  (``"bilinear"`` by default: smooth, and it ignores nodata neighbours;
  ``"nearest"`` keeps original values; ``"cubic"`` is also accepted). All files
  must share one CRS (``InputError`` otherwise). A single-band file's band name
  is the band token of its file name (``B02``, ``B8A``, ``B4``, ``B10``: the
  last ``_Bnn[A]`` token, upper-cased), else its description, else its file
  stem; mapping tokens to a sensor's bands is ``geolift.srf.resolve_band``'s job.
* **Wavelengths and FWHM** come from the first source that gives a value for
  every band, in this order: band metadata ``wavelength`` / ``fwhm`` /
  ``wavelength_units`` (GeoTIFFs written by geolift, the EnMAP-Box, GDAL 3.10's
  ENVI driver), the ENVI header lists (GDAL's ``ENVI`` metadata domain), an
  ENVI-style ``{a, b, ...}`` list in the dataset metadata, GDAL 3.10's
  ``IMAGERY`` domain (``CENTRAL_WAVELENGTH_UM``, ``FWHM_UM``; rounded to 1 nm by
  GDAL, hence last), and finally band descriptions such as
  ``"band 8 (0.460000 Micrometers)"`` or ``"Band 1 (450.5 nm)"``. FWHM is taken
  from the first source that has it for every band. Values are converted to
  nanometres (micrometres x 1000, millimetres x 1e6). Only when no unit is
  given anywhere is the unit guessed from magnitude: all values below 100 mean
  micrometres, otherwise nanometres (a ``GeoliftWarning`` says so).
* **Nodata** is the file's nodata value per band (or ``nodata=`` to override it,
  e.g. for Sentinel-2 JP2s that do not declare their 0), a per-dataset mask or
  alpha band when there is one, and NaN in float files; all become ``NaN``.
* **Scale/offset** from GDAL band metadata are applied when they are not the
  identity (``value = raw * scale + offset``). Ad-hoc tags such as
  ``scale_factor_reflectance`` are *not* applied; they are kept in ``Scene.tags``.
* **Bad bands**: a ``bbl`` band tag or ENVI ``bbl`` list; ``Scene.good_bands``
  is False where ``bbl`` is 0, so the pipeline can leave those bands out of
  training and write nodata for them.

``Scene`` fields: ``paths``, ``crs``, ``transform``, ``width``, ``height``,
``count``, ``dtypes``, ``nodata`` (per band, as in the file), ``scales``,
``offsets``, ``wavelengths_nm``, ``fwhm_nm`` (``np.ndarray`` or ``None``),
``wavelength_source``, ``good_bands`` (bool array), ``band_names``,
``descriptions`` (raw band descriptions, ``""`` when absent, for
``srf.resolve_band``), ``tags`` (dataset metadata of the first file).
Helpers: ``path``, ``dtype``, ``res``, ``bounds``, ``shape``,
``window_transform(window)``, ``good_band_indices()``, ``block_windows(size)``.

``Scene.read(window=None, bands=None, out_shape=None, resampling=None)`` returns
float32 ``(bands, rows, cols)`` with NaN for nodata. ``window`` is a rasterio
``Window`` or ``((row_start, row_stop), (col_start, col_stop))`` inside the
scene; ``bands`` are **0-based** band indices (or a boolean mask such as
``scene.good_bands``); ``out_shape=(rows, cols)`` resamples the window
(default method: ``average`` when shrinking, ``bilinear`` when enlarging;
integer files are resampled in their own type, i.e. rounded).

Writing
-------
``check_output_path(path, *, overwrite=False, inputs=()) -> Path`` checks, before
any heavy work, that the output can be written: its folder exists and is
writable, it is not an existing file (unless ``overwrite``), and it is none of
``inputs`` (never overwritten, even with ``overwrite``). It raises
``OutputError``.

``HSIWriter(path, *, crs, transform, width, height, wavelengths_nm, fwhm_nm=None,
band_names=None, good_bands=None, dtype="float32", scale=None, offset=None,
nodata=None, tile=512, compress="deflate", num_threads=2, bigtiff="IF_SAFER",
tags=None, parameters=None, overwrite=False, inputs=())`` is a context manager::

    with HSIWriter(out, crs=msi.crs, transform=msi.transform, width=msi.width,
                   height=msi.height, wavelengths_nm=hsi.wavelengths_nm,
                   inputs=hsi.paths + msi.paths) as writer:
        for window in writer.block_windows():
            writer.write_block(predict(window), window)   # (C, rows, cols) float

It writes a band-interleaved, tiled GeoTIFF (``tile`` 256 or 512, any multiple
of 16 works), DEFLATE (or ``"zstd"``, ``"lzw"``, ``"none"``) with predictor 2
for int16 and 3 for float32, ``BIGTIFF=IF_SAFER`` and ``NUM_THREADS``
compression threads, into a hidden temporary file next to the output
(``.fused.tif.geolift-tmp-XXXX``) that replaces the output only when the
``with`` block ends without an exception; otherwise the temporary file is
removed. Band interleaving keeps one tile at a few MB however many bands there
are (pixel interleaving would put all bands in every tile).

Each band gets the description ``"band 12 (512.3 nm)"`` (``band_names``
replace ``"band 12"``), band tags ``wavelength``, ``fwhm``,
``wavelength_units=Nanometers`` and, with ``good_bands``, ``bbl`` (EnMAP-Box
and QGIS read these; GDAL 3.10 readers also get ``IMAGERY``
``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM``). Dataset tags: ``geolift_version``,
``wavelength_units``, ``geolift_parameters`` (JSON of ``parameters``) and the
caller's ``tags``. ``dtype="float32"`` writes values as given (nodata NaN by
default); ``dtype="int16"`` stores ``round((value - offset) / scale)`` clipped
to the int16 range, declares ``scale``/``offset`` as GDAL band scale/offset so
readers unscale (``scale=1e-4`` stores reflectance 0..1 as 0..10000) and writes
NaN as nodata (default -32768; a valid value that would round onto the nodata
value is nudged by one). Blocks never written are filled with nodata by GDAL.
``write_hsi(path, cube, **kwargs)`` writes a whole array in one call.

``block_windows(width, height, size=512)`` yields row-major windows that tile a
grid; tile-aligned windows keep compressed GeoTIFF writes efficient.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geolift.errors import GeoliftWarning, InputError, MetadataError, OutputError

__all__ = [
    "Scene",
    "open_scene",
    "band_token",
    "block_windows",
    "check_output_path",
    "HSIWriter",
    "write_hsi",
]

logger = logging.getLogger("geolift")

PathLike = str | os.PathLike

_RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
}

# ---------------------------------------------------------------------------
# Opening files
# ---------------------------------------------------------------------------

#: Float32 bytes read at a time from one file when a window is large (see ``Scene._row_strips``).
READ_STRIP_BYTES = 64 * 2**20
_ENVI_DATA_SUFFIXES = ("", ".bsq", ".bil", ".bip", ".img", ".dat", ".raw", ".bin", ".envi")
_NOT_DATA_SUFFIXES = {".hdr", ".xml", ".properties", ".ovr", ".aux", ".sta", ".txt", ".json"}


_URL_PREFIXES = {"s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/",
                 "http://": "/vsicurl/http://", "https://": "/vsicurl/https://"}


def _remote_path(path: PathLike) -> str | None:
    """GDAL's name for a URL or ``/vsi...`` path (``s3://b/k`` -> ``/vsis3/b/k``), None for a local file.

    Remote paths must stay strings: ``Path`` would fold the ``//`` of ``https://``.
    """
    text = os.fspath(path)
    if text.startswith("/vsi"):
        return text
    for prefix, vsi in _URL_PREFIXES.items():
        if text.startswith(prefix):
            return vsi + text[len(prefix):]
    return None


def _resolve_input(path: PathLike) -> Path | str:
    """Return the file GDAL should open for ``path`` (an ENVI ``.hdr`` maps to its data file).

    URLs and ``/vsi...`` paths go to GDAL untouched; GDAL reports if they cannot be opened.
    """
    remote = _remote_path(path)
    if remote is not None:
        return remote
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"Input file not found: {p}.")
    if p.is_dir():
        raise InputError(f"Input {p} is a folder; give a raster file or a list of band files.")
    if p.suffix.lower() != ".hdr":
        return p
    stem = p.with_suffix("")  # x.hdr -> x ; x.bsq.hdr -> x.bsq
    candidates = [stem.with_name(stem.name + s) for s in _ENVI_DATA_SUFFIXES]
    candidates += [
        c for c in sorted(p.parent.glob(stem.name + ".*"))
        if c.suffix.lower() not in _NOT_DATA_SUFFIXES and c not in candidates
    ]
    for c in candidates:
        if c.is_file() and c != p:
            return c
    raise InputError(f"ENVI header {p} has no matching data file next to it (e.g. {stem.name}.bsq).")


@contextmanager
def _open_raster(path: Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open ``path`` with GDAL, turning GDAL's failure into an ``InputError`` naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not recognized" in reason or "not a supported" in reason.lower():
            raise InputError(f"{path} is not a raster file that GDAL can read.") from exc
        raise InputError(f"Cannot open {path} as a raster ({reason}).") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            yield ds
    finally:
        ds.close()


def _check_georeferencing(ds, path: Path) -> tuple[CRS, Affine]:
    """A scene must map pixels to a CRS; GCP-only or identity-transform files are refused."""
    crs = ds.crs
    has_crs = crs is not None and bool(crs.to_wkt())
    transform = ds.transform
    has_transform = not transform.is_identity
    if not has_transform:
        gcps, _ = ds.gcps
        if gcps:
            raise MetadataError(
                f"{path} is georeferenced only by ground control points; "
                "warp it onto a grid first (e.g. gdalwarp)."
            )
        if not has_crs:
            raise MetadataError(f"{path} is not georeferenced (no CRS and no geotransform).")
        raise MetadataError(f"{path} has no geotransform (pixel-to-map mapping).")
    if not has_crs:
        raise MetadataError(f"{path} has no coordinate reference system (CRS); assign one, e.g. with gdal_edit -a_srs.")
    return crs, _clean_transform(transform)


def _clean_transform(t: Affine) -> Affine:
    """Zero rotation terms that are only floating-point dust (ENVI headers give -0.0 or 1e-15)."""
    b, d = t.b, t.d
    if abs(b) < 1e-9 * abs(t.a):
        b = 0.0
    if abs(d) < 1e-9 * abs(t.e):
        d = 0.0
    return Affine(t.a + 0.0, b, t.c, d, t.e + 0.0, t.f)


# ---------------------------------------------------------------------------
# Spectral metadata
# ---------------------------------------------------------------------------

_NM_UNITS = {"nm", "nanometer", "nanometers", "nanometre", "nanometres"}
_UM_UNITS = {"um", "micrometer", "micrometers", "micrometre", "micrometres", "micron", "microns", "mu"}
_MM_UNITS = {"mm", "millimeter", "millimeters", "millimetre", "millimetres"}
_NO_UNITS = {"", "unknown", "none", "n/a"}
_INDEX_UNITS = {"index", "band", "bands", "band number"}

_DESC_WITH_UNIT = re.compile(
    r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*"
    r"(nanomet(?:er|re)s?|nm|micromet(?:er|re)s?|microns?|µm|μm|um)\b",
    re.IGNORECASE,
)


def _unit_factor(units: str | None, path: Path) -> float | None:
    """nm per unit; None when no unit is known (guess later); NaN for band indices (not wavelengths)."""
    if units is None:
        return None
    u = units.strip().lower().replace("µ", "u").replace("μ", "u")
    if u in _NO_UNITS:
        return None
    if u in _NM_UNITS:
        return 1.0
    if u in _UM_UNITS:
        return 1000.0
    if u in _MM_UNITS:
        return 1.0e6
    if u in _INDEX_UNITS:
        return math.nan
    raise MetadataError(
        f"{path} gives wavelengths in unsupported units {units!r}; geolift needs nanometres or micrometres."
    )


def _parse_list(text: str | None) -> list[str] | None:
    """Parse an ENVI-style ``{a, b, c}`` list (or a bare comma list)."""
    if text is None:
        return None
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    items = [s.strip() for s in inner.split(",")]
    items = [s for s in items if s]
    return items or None


def _floats(values: Sequence[str | None] | None, n: int) -> np.ndarray | None:
    """n floats, or None when any is missing or not a number."""
    if values is None or len(values) != n:
        return None
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


@dataclass
class _Spectral:
    wavelengths_nm: np.ndarray | None
    fwhm_nm: np.ndarray | None
    bbl: np.ndarray | None
    source: str | None


def _lower_keys(d: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in d.items()}


def _to_nm(values: np.ndarray, factors: list[float | None]) -> tuple[np.ndarray | None, str | None]:
    """Convert per-band values to nm; guess the unit from magnitude only if no band states one.

    Returns the values in nm (None for band indices) and the guessed unit, or None when no guess was made.
    """
    if any(f is not None and math.isnan(f) for f in factors):
        return None, None  # wavelength "units = Index": band numbers, not wavelengths
    known = [f for f in factors if f is not None]
    if known:  # bands without a unit take the unit of the first band that has one
        return values * np.array([f if f is not None else known[0] for f in factors]), None
    if np.max(values) < 100:
        return values * 1000.0, "micrometres"
    return values.copy(), "nanometres"


def _spectral_metadata(ds, path: Path, bands: Sequence[int]) -> _Spectral:
    """Find wavelengths, FWHM and bad-band flags of ``bands`` (1-based) in all the places GDAL puts them."""
    n = len(bands)
    ds_tags = _lower_keys(ds.tags())
    envi = _lower_keys(ds.tags(ns="ENVI")) if "ENVI" in (ds.tag_namespaces() or []) else {}
    band_tags = [_lower_keys(ds.tags(b)) for b in bands]
    imagery = [
        _lower_keys(ds.tags(b, ns="IMAGERY")) if "IMAGERY" in (ds.tag_namespaces(b) or []) else {} for b in bands
    ]
    dataset_units = ds_tags.get("wavelength_units") or envi.get("wavelength_units")
    all_bands = list(range(1, ds.count + 1))

    def pick_list(values: list[str] | None) -> list[str] | None:
        """Dataset-wide lists describe every band of the file; keep the selected ones."""
        if values is None or len(values) != ds.count:
            return None
        return [values[all_bands.index(b)] for b in bands]

    # (name, wavelength values, per-band unit factors, fwhm values)
    candidates: list[tuple[str, np.ndarray | None, list[float | None], np.ndarray | None]] = []

    units_bt = [_unit_factor(t.get("wavelength_units") or dataset_units, path) for t in band_tags]
    candidates.append(
        (
            "band metadata",
            _floats([t.get("wavelength") for t in band_tags], n),
            units_bt,
            _floats([t.get("fwhm") for t in band_tags], n),
        )
    )
    if envi:
        u = _unit_factor(envi.get("wavelength_units") or dataset_units, path)
        candidates.append(
            (
                "ENVI header",
                _floats(pick_list(_parse_list(envi.get("wavelength"))), n),
                [u] * n,
                _floats(pick_list(_parse_list(envi.get("fwhm"))), n),
            )
        )
    if "wavelength" in ds_tags and "{" in ds_tags["wavelength"]:
        u = _unit_factor(dataset_units, path)
        candidates.append(
            (
                "dataset metadata list",
                _floats(pick_list(_parse_list(ds_tags.get("wavelength"))), n),
                [u] * n,
                _floats(pick_list(_parse_list(ds_tags.get("fwhm"))), n),
            )
        )
    candidates.append(
        (
            "IMAGERY metadata",
            _floats([t.get("central_wavelength_um") for t in imagery], n),
            [1000.0] * n,
            _floats([t.get("fwhm_um") for t in imagery], n),
        )
    )
    desc_values: list[str | None] = []
    desc_units: list[float | None] = []
    for b in bands:
        desc = ds.descriptions[b - 1] or ""
        m = _DESC_WITH_UNIT.search(desc)  # a bare "(2)" is too often a counter, so a unit is required
        desc_values.append(m.group(1) if m else None)
        desc_units.append(_unit_factor(m.group(2), path) if m else None)
    candidates.append(("band descriptions", _floats(desc_values, n), desc_units, None))

    wavelengths = fwhm = None
    source = guessed = None
    wavelength_factor = 1.0
    for name, values, factors, _ in candidates:
        if values is not None:
            wavelengths, guessed = _to_nm(values, factors)
            if wavelengths is not None:
                source = name
                known = [f for f in factors if f is not None]
                wavelength_factor = known[0] if known else (1000.0 if guessed == "micrometres" else 1.0)
                break
    if wavelengths is not None:
        # A FWHM without a unit takes the wavelengths' unit: its magnitude says nothing (10 nm vs 0.01 µm).
        for _, _, factors, values in candidates:
            if values is not None:
                fwhm, _ = _to_nm(values, [f if f is not None else wavelength_factor for f in factors])
                if fwhm is not None:
                    break
    if wavelengths is not None:
        if guessed:
            warnings.warn(
                f"{path} gives wavelengths without a unit; they were read as {guessed} from their magnitude.",
                GeoliftWarning,
                stacklevel=2,
            )
        if not np.all((wavelengths >= 100) & (wavelengths <= 100_000)):
            raise MetadataError(
                f"{path} has wavelengths outside 100 nm - 100 µm after unit conversion "
                f"({np.nanmin(wavelengths):g} - {np.nanmax(wavelengths):g} nm); check its wavelength units."
            )
        logger.debug("%s: wavelengths from %s", path, source)

    bbl = None
    bbl_values = _floats([t.get("bbl") for t in band_tags], n)
    if bbl_values is None and envi:
        bbl_values = _floats(pick_list(_parse_list(envi.get("bbl"))), n)
    if bbl_values is None and "bbl" in ds_tags:
        bbl_values = _floats(pick_list(_parse_list(ds_tags.get("bbl"))), n)
    if bbl_values is not None:
        bbl = bbl_values != 0
    return _Spectral(wavelengths, fwhm, bbl, source)


# ---------------------------------------------------------------------------
# Band names
# ---------------------------------------------------------------------------

_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B\d{1,2}A?)(?=$|[_\-.])", re.IGNORECASE)


def band_token(path: PathLike) -> str | None:
    """The band token of an agency file name (``..._B02_10m.jp2`` -> ``"B02"``, ``..._SR_B4.TIF`` -> ``"B4"``).

    The last ``B<digits>[A]`` token between separators wins; ``None`` when there is none.
    """
    matches = _BAND_TOKEN.findall(Path(path).stem)
    return matches[-1].upper() if matches else None


# ---------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileBands:
    """Where some of a scene's bands live: one file, its 1-based band indexes, how to read it."""

    path: str
    bands: tuple[int, ...]
    on_grid: bool  # the file's grid is the scene grid: read directly, no warping
    use_mask: bool  # honour the file's per-dataset mask / alpha band
    resampling: str  # used to warp files that are not on the scene grid


@dataclass(frozen=True, eq=False)
class Scene:
    """A georeferenced raster (or stack of band files) described by its metadata; read pixels with ``read``."""

    paths: tuple[str, ...]
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    scales: np.ndarray
    offsets: np.ndarray
    wavelengths_nm: np.ndarray | None
    fwhm_nm: np.ndarray | None
    good_bands: np.ndarray
    band_names: tuple[str, ...]
    descriptions: tuple[str, ...]
    tags: dict[str, str]
    wavelength_source: str | None = None
    files: tuple[_FileBands, ...] = field(default=(), repr=False)

    # -- convenience -------------------------------------------------------
    @property
    def path(self) -> str:
        """The first (for a single raster: the only) file."""
        return self.paths[0]

    @property
    def dtype(self) -> str:
        """The common numpy type of all bands in the files."""
        return str(np.result_type(*self.dtypes))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.count, self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> BoundingBox:
        return BoundingBox(*_bounds(self.transform, self.width, self.height))

    def window_transform(self, window: Window | tuple) -> Affine:
        """The geotransform of ``window`` (for writing or aligning a tile)."""
        return rasterio.windows.transform(self._window(window), self.transform)

    def good_band_indices(self) -> np.ndarray:
        """0-based indices of the bands not flagged bad."""
        return np.flatnonzero(self.good_bands)

    def block_windows(self, size: int = 512) -> Iterator[Window]:
        """Windows of at most ``size`` x ``size`` pixels covering the scene, row by row."""
        return block_windows(self.width, self.height, size)

    # -- reading -----------------------------------------------------------
    def _window(self, window: Window | tuple | None) -> Window:
        if window is None:
            return Window(0, 0, self.width, self.height)
        if not isinstance(window, Window):
            window = Window.from_slices(*window)
        col_off, row_off = int(round(window.col_off)), int(round(window.row_off))
        w, h = int(round(window.width)), int(round(window.height))
        if col_off < 0 or row_off < 0 or w <= 0 or h <= 0 or col_off + w > self.width or row_off + h > self.height:
            raise ValueError(f"window {window} is not inside the {self.height} x {self.width} scene")
        return Window(col_off, row_off, w, h)

    def _band_indices(self, bands) -> np.ndarray:
        if bands is None:
            return np.arange(self.count)
        idx = np.asarray(bands)
        if idx.dtype == bool:
            if idx.shape != (self.count,):
                raise ValueError(f"band mask has shape {idx.shape}, expected ({self.count},)")
            return np.flatnonzero(idx)
        idx = idx.astype(int).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise ValueError(f"band indices must be 0-based and below {self.count}")
        return idx

    def read(
        self,
        window: Window | tuple | None = None,
        bands: Sequence[int] | np.ndarray | None = None,
        out_shape: tuple[int, int] | None = None,
        resampling: str | None = None,
    ) -> np.ndarray:
        """Pixels of ``window`` as float32 ``(bands, rows, cols)``, NaN for nodata, scale/offset applied.

        ``bands`` are 0-based (or a boolean mask); ``out_shape=(rows, cols)`` resamples the window
        (``resampling`` defaults to average when shrinking, bilinear when enlarging).
        """
        win = self._window(window)
        idx = self._band_indices(bands)
        rows, cols = (int(out_shape[0]), int(out_shape[1])) if out_shape is not None else (win.height, win.width)
        if resampling is None:
            if rows < win.height or cols < win.width:
                resampling = "average"
            elif rows > win.height or cols > win.width:
                resampling = "bilinear"
            else:
                resampling = "nearest"
        method = _resampling(resampling)
        out = np.empty((idx.size, rows, cols), dtype=np.float32)
        band_file = self._band_to_file()
        wanted: dict[int, list[tuple[int, int]]] = {}  # file number -> [(out position, scene band)]
        for pos, b in enumerate(idx):
            wanted.setdefault(band_file[b][0], []).append((pos, int(b)))
        for file_no, items in wanted.items():
            fb = self.files[file_no]
            scene_bands = [b for _, b in items]
            file_bands = [fb.bands[band_file[b][1]] for b in scene_bands]
            resampled = (rows, cols) != (win.height, win.width)
            for r0, r1 in [(0, rows)] if resampled else self._row_strips(fb, win, len(items)):
                strip = win if resampled else Window(win.col_off, win.row_off + r0, win.width, r1 - r0)
                data = self._read_file(fb, scene_bands, file_bands, strip, (r1 - r0, cols), method)
                for k, (pos, b) in enumerate(items):
                    scale, offset = self.scales[b], self.offsets[b]
                    if scale != 1.0 or offset != 0.0:
                        out[pos, r0:r1] = data[k] * np.float32(scale) + np.float32(offset)
                    else:
                        out[pos, r0:r1] = data[k]
                del data
        return out

    def _row_strips(self, fb: _FileBands, win: Window, n_bands: int) -> list[tuple[int, int]]:
        """Row ranges (relative to ``win``) that read a large window in pieces of about
        :data:`READ_STRIP_BYTES` as float32, cut on the file's block rows.

        Each piece reopens the file, so GDAL's block cache and the raw and float temporaries hold one
        strip, not the whole window: reading a full EnMAP scene (0.8 GB as float32) needed 2.2 GB at
        once, and the freed blocks stayed in the process's heap (0.4 GB) for the rest of the run.
        """
        row_bytes = 4 * n_bands * int(win.width)
        if row_bytes * win.height <= READ_STRIP_BYTES or not fb.on_grid:
            return [(0, int(win.height))]
        with _open_raster(Path(fb.path)) as ds:
            block_rows = int(ds.block_shapes[0][0])
        if block_rows * row_bytes > 4 * READ_STRIP_BYTES:  # huge blocks: pieces would decode each one again
            return [(0, int(win.height))]
        step = max(block_rows, READ_STRIP_BYTES // row_bytes // block_rows * block_rows)
        top, bottom = int(win.row_off), int(win.row_off + win.height)
        cuts = [top, *range((top // step + 1) * step, bottom, step), bottom]
        return [(a - top, b - top) for a, b in zip(cuts[:-1], cuts[1:])]

    def _band_to_file(self) -> list[tuple[int, int]]:
        """For each scene band: (file number, position in that file's band tuple)."""
        mapping = []
        for file_no, fb in enumerate(self.files):
            mapping.extend((file_no, k) for k in range(len(fb.bands)))
        return mapping

    def _read_file(self, fb: _FileBands, scene_bands: list[int], file_bands: list[int], win: Window,
                   shape: tuple[int, int], method: Resampling) -> np.ndarray:
        """Some bands of one file as float32 with NaN wherever the file says nodata (value, mask, NaN)."""
        out_shape = (len(file_bands), *shape)
        nodata = [self.nodata[b] for b in scene_bands]
        try:
            with _open_raster(fb.path) as ds:
                if fb.on_grid:
                    raw = ds.read(file_bands, window=win, out_shape=out_shape, resampling=method)
                    invalid = np.zeros(raw.shape, dtype=bool)
                    for k, nd in enumerate(nodata):
                        if _representable(nd, raw.dtype):  # compare in the file's type: exact for any integer
                            invalid[k] = raw[k] == np.array(nd).astype(raw.dtype)
                    if fb.use_mask:
                        masks = ds.read_masks(file_bands, window=win, out_shape=out_shape,
                                              resampling=Resampling.nearest)
                        invalid |= masks == 0
                    data = raw.astype(np.float32, copy=False)
                    data[invalid] = np.nan
                    return data
                # A band file off the scene grid is warped onto it; outside its footprint is NaN.
                with WarpedVRT(
                    ds,
                    crs=self.crs,
                    transform=self.transform,
                    width=self.width,
                    height=self.height,
                    resampling=_resampling(fb.resampling),
                    src_nodata=nodata[0],
                    nodata=np.nan,
                    dtype="float32",
                ) as vrt:
                    return vrt.read(file_bands, window=win, out_shape=out_shape, resampling=method)
        except RasterioError as exc:
            raise InputError(f"Reading {fb.path} failed ({str(exc).strip().splitlines()[0]}).") from exc

    def has_valid_pixels(self) -> bool:
        """Whether any good band has a non-nodata pixel (cheap decimated look first, exact block scan if needed)."""
        good = self.good_band_indices()
        if good.size == 0:
            return False
        step = max(1, math.ceil(max(self.width, self.height) / 256))
        preview = (max(1, self.height // step), max(1, self.width // step))
        if np.isfinite(self.read(bands=good[:1], out_shape=preview, resampling="nearest")).any():
            return True
        for window in block_windows(self.width, self.height, 1024):
            if np.isfinite(self.read(window=window, bands=good)).any():
                return True
        return False


def _representable(value: float | None, dtype: np.dtype) -> bool:
    """Whether a nodata value can occur in an array of ``dtype`` (NaN is handled by the float cast)."""
    if value is None or math.isnan(value):
        return False
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def _bounds(t: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    xs = [t.c, t.c + t.a * width + t.b * height, t.c + t.a * width, t.c + t.b * height]
    ys = [t.f, t.f + t.d * width + t.e * height, t.f + t.d * width, t.f + t.e * height]
    return (min(xs), min(ys), max(xs), max(ys))


def _resampling(name: str) -> Resampling:
    try:
        return _RESAMPLING[name.lower()]
    except KeyError:
        raise ValueError(f"unknown resampling {name!r}; use one of {sorted(_RESAMPLING)}") from None


@dataclass
class _FileInfo:
    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    bands: tuple[int, ...]
    dtypes: list[str]
    nodata: list[float | None]
    scales: list[float]
    offsets: list[float]
    descriptions: list[str]
    spectral: _Spectral
    tags: dict[str, str]
    use_mask: bool


def _inspect(path: Path, nodata_override: float | None) -> _FileInfo:
    """Everything io needs to know about one file, read from its metadata only."""
    with _open_raster(path) as ds:
        if ds.count == 0:
            subs = ds.subdatasets
            hint = f"; open one of its {len(subs)} subdatasets, e.g. {subs[0]}" if subs else ""
            raise InputError(f"{path} has no raster bands{hint}.")
        crs, transform = _check_georeferencing(ds, path)
        interp = ds.colorinterp
        alpha = [i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha]
        bands = tuple(b for b in range(1, ds.count + 1) if b not in alpha) or tuple(range(1, ds.count + 1))
        flags = ds.mask_flag_enums[bands[0] - 1]
        use_mask = MaskFlags.all_valid not in flags and MaskFlags.nodata not in flags
        nodata = [nodata_override if nodata_override is not None else ds.nodatavals[b - 1] for b in bands]
        tags = {k: v for k, v in ds.tags().items() if not re.fullmatch(r"Band_\d+", k)}
        return _FileInfo(
            path=path,
            crs=crs,
            transform=transform,
            width=ds.width,
            height=ds.height,
            bands=bands,
            dtypes=[ds.dtypes[b - 1] for b in bands],
            nodata=[None if v is None else float(v) for v in nodata],
            scales=[1.0 if ds.scales[b - 1] is None else float(ds.scales[b - 1]) for b in bands],
            offsets=[0.0 if ds.offsets[b - 1] is None else float(ds.offsets[b - 1]) for b in bands],
            descriptions=[ds.descriptions[b - 1] or "" for b in bands],
            spectral=_spectral_metadata(ds, path, bands),
            tags=tags,
            use_mask=use_mask,
        )


def _same_grid(a: _FileInfo, b: _FileInfo) -> bool:
    """Same size and geotransform (to a millionth of a pixel): read directly instead of warping."""
    return (a.width, a.height) == (b.width, b.height) and a.transform.almost_equals(
        b.transform, precision=1e-6 * abs(b.transform.a)
    )


def _band_name(info: _FileInfo, k: int, *, in_list: bool) -> str:
    """A label the pipeline can map to a sensor band: file-name token, description, or position."""
    if in_list and len(info.bands) == 1:
        return band_token(info.path) or info.descriptions[0] or info.path.stem
    if info.descriptions[k]:
        return info.descriptions[k]
    return f"{info.path.stem} band {k + 1}" if in_list else f"band {k + 1}"


def open_scene(
    source: PathLike | Sequence[PathLike],
    *,
    require_wavelengths: bool = False,
    nodata: float | None = None,
    resampling: str = "bilinear",
    check_data: bool = True,
) -> Scene:
    """Describe a raster or a list of band files as one ``Scene`` (metadata only; see the module docstring).

    ``require_wavelengths=True`` (the LR-HSI) raises ``MetadataError`` when no wavelength is found;
    ``nodata`` overrides the files' nodata value; ``resampling`` warps coarser band files onto the
    finest grid; ``check_data`` refuses a scene whose good bands hold only nodata.
    """
    single = isinstance(source, (str, os.PathLike))
    raw_paths = [source] if single else list(source)
    if not raw_paths:
        raise InputError("No input file given.")
    _resampling(resampling)  # fail early on a bad name
    resolved = [_resolve_input(p) for p in raw_paths]
    paths = [p if isinstance(p, str) else Path(os.path.abspath(p)) for p in resolved]
    infos = [_inspect(p, nodata) for p in paths]

    target = min(infos, key=lambda i: abs(i.transform.a * i.transform.e))  # min() keeps the first among equals
    for info in infos:
        if info.crs != target.crs:
            raise InputError(
                f"Band files must share one CRS, but {info.path} is in {info.crs.to_string()} "
                f"and {target.path} in {target.crs.to_string()}."
            )
        l1, b1, r1, t1 = _bounds(info.transform, info.width, info.height)
        l2, b2, r2, t2 = _bounds(target.transform, target.width, target.height)
        if r1 <= l2 or r2 <= l1 or t1 <= b2 or t2 <= b1:
            raise InputError(f"Band file {info.path} does not overlap {target.path}.")

    names = [_band_name(info, k, in_list=not single) for info in infos for k in range(len(info.bands))]

    def concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
        return None if any(p is None for p in parts) else np.concatenate(parts)

    wavelengths = concat([i.spectral.wavelengths_nm for i in infos])
    fwhm = concat([i.spectral.fwhm_nm for i in infos]) if wavelengths is not None else None
    good = np.concatenate(
        [i.spectral.bbl if i.spectral.bbl is not None else np.ones(len(i.bands), bool) for i in infos]
    )
    sources = sorted({i.spectral.source for i in infos if i.spectral.source})
    scene = Scene(
        paths=tuple(str(i.path) for i in infos),
        crs=target.crs,
        transform=target.transform,
        width=target.width,
        height=target.height,
        count=sum(len(i.bands) for i in infos),
        dtypes=tuple(d for i in infos for d in i.dtypes),
        nodata=tuple(v for i in infos for v in i.nodata),
        scales=np.array([v for i in infos for v in i.scales], dtype=np.float64),
        offsets=np.array([v for i in infos for v in i.offsets], dtype=np.float64),
        wavelengths_nm=wavelengths,
        fwhm_nm=fwhm,
        good_bands=good,
        band_names=tuple(names),
        descriptions=tuple(d for i in infos for d in i.descriptions),
        tags=dict(infos[0].tags),
        wavelength_source=", ".join(sources) if wavelengths is not None else None,
        files=tuple(
            _FileBands(str(i.path), i.bands, _same_grid(i, target), i.use_mask, resampling) for i in infos
        ),
    )
    label = scene.path if len(scene.paths) == 1 else f"the band files starting with {scene.path}"
    if require_wavelengths and scene.wavelengths_nm is None:
        raise MetadataError(
            f"{label} has no band wavelengths (band tags, ENVI header or descriptions like 'band 1 (450 nm)')."
        )
    if check_data:
        if not scene.good_bands.any():
            raise InputError(f"{label} has every band flagged bad (bbl = 0).")
        if not scene.has_valid_pixels():
            raise InputError(f"{label} contains no valid pixels (every pixel is nodata).")
    return scene


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def block_windows(width: int, height: int, size: int = 512) -> Iterator[Window]:
    """Row-major windows of at most ``size`` x ``size`` that exactly tile a ``height`` x ``width`` grid."""
    if size <= 0:
        raise ValueError("block size must be positive")
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: PathLike, *, overwrite: bool = False, inputs: Sequence[PathLike] = ()) -> Path:
    """Refuse, before any heavy work, an output that cannot or must not be written; return it absolute.

    Never an input (even with ``overwrite``); not an existing file unless ``overwrite``; its folder must
    exist and accept a new file (probed by creating and removing one, as permissions alone can lie).
    """
    out = Path(os.path.abspath(Path(path).expanduser()))
    # An ENVI header stands for its data file: x.hdr protects x.bsq, x.img, ... and x.bsq.hdr protects x.bsq.
    headers_of_out = (out.with_suffix(".hdr"), Path(str(out) + ".hdr"))
    for inp in inputs:
        inp_path = Path(inp).expanduser()
        related = [out]
        if inp_path.suffix.lower() == ".hdr":
            related += headers_of_out
        if any(_same_file(r, inp_path) for r in related):
            raise OutputError(f"Output {out} is one of the inputs; choose another output file.")
    if out.is_dir():
        raise OutputError(f"Output {out} is a folder; give a file name such as {out / 'fused.tif'}.")
    if out.exists() and not overwrite:
        raise OutputError(f"Output {out} already exists; use --overwrite (overwrite=True) to replace it.")
    folder = out.parent
    if not folder.exists():
        raise OutputError(f"Output folder {folder} does not exist.")
    if not folder.is_dir():
        raise OutputError(f"Output folder {folder} is not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".geolift-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"Output folder {folder} is not writable ({exc.strerror}).") from exc
    return out


def _geolift_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("geolift")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _fmt(value: float) -> str:
    return f"{float(value):.7g}"


_DESC_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_COMPRESS = {"deflate": "DEFLATE", "zstd": "ZSTD", "lzw": "LZW", "none": None}
_BIGTIFF = {"IF_SAFER", "IF_NEEDED", "YES", "NO"}
_INT16_MIN, _INT16_MAX = -32768, 32767
_ENCODE_BANDS = 16


class HSIWriter:
    """Stream a fused HR-HSI into a tiled, compressed GeoTIFF that appears only once complete.

    Use as a context manager (see the module docstring); ``write_block`` takes float blocks
    ``(count, rows, cols)`` with NaN for nodata.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        crs: CRS | str,
        transform: Affine,
        width: int,
        height: int,
        wavelengths_nm: Sequence[float] | np.ndarray,
        fwhm_nm: Sequence[float] | np.ndarray | None = None,
        band_names: Sequence[str] | None = None,
        good_bands: Sequence[bool] | np.ndarray | None = None,
        dtype: str = "float32",
        scale: float | None = None,
        offset: float | None = None,
        nodata: float | None = None,
        tile: int = 512,
        compress: str = "deflate",
        num_threads: int | str = 2,
        bigtiff: str = "IF_SAFER",
        tags: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        inputs: Sequence[PathLike] = (),
    ) -> None:
        self.wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64).ravel()
        self.count = int(self.wavelengths_nm.size)
        if self.count == 0:
            raise OutputError("The output needs at least one band (no wavelengths given).")
        self.fwhm_nm = None if fwhm_nm is None else np.asarray(fwhm_nm, dtype=np.float64).ravel()
        if self.fwhm_nm is not None and self.fwhm_nm.size != self.count:
            raise OutputError(f"Got {self.fwhm_nm.size} FWHM values for {self.count} bands.")
        self.band_names = None if band_names is None else list(band_names)
        if self.band_names is not None and len(self.band_names) != self.count:
            raise OutputError(f"Got {len(self.band_names)} band names for {self.count} bands.")
        self.good_bands = None if good_bands is None else np.asarray(good_bands, dtype=bool).ravel()
        if self.good_bands is not None and self.good_bands.size != self.count:
            raise OutputError(f"Got {self.good_bands.size} bad-band flags for {self.count} bands.")

        self.dtype = str(dtype).lower()
        if self.dtype not in ("float32", "int16"):
            raise OutputError(f"Output type {dtype!r} is not supported; use 'float32' or 'int16'.")
        if self.dtype == "float32" and ((scale not in (None, 1, 1.0)) or (offset not in (None, 0, 0.0))):
            raise OutputError("A scale or offset only applies to int16 output; float32 stores values as they are.")
        self.scale = 1.0 if scale is None else float(scale)
        self.offset = 0.0 if offset is None else float(offset)
        if not math.isfinite(self.scale) or self.scale == 0:
            raise OutputError(f"The int16 scale must be a non-zero number, got {scale!r}.")
        if nodata is None:
            nodata = math.nan if self.dtype == "float32" else _INT16_MIN
        self.nodata = float(nodata)
        if self.dtype == "int16" and not (
            math.isfinite(self.nodata) and self.nodata == int(self.nodata) and _INT16_MIN <= self.nodata <= _INT16_MAX
        ):
            raise OutputError(f"The int16 nodata value must be an integer in the int16 range, got {nodata!r}.")

        if tile % 16 or not 16 <= tile <= 4096:
            raise OutputError(f"Tile size {tile} is not a multiple of 16 between 16 and 4096 (use 256 or 512).")
        self.tile = int(tile)
        key = str(compress).lower()
        if key not in _COMPRESS:
            raise OutputError(f"Compression {compress!r} is not supported; use one of {sorted(_COMPRESS)}.")
        if str(bigtiff).upper() not in _BIGTIFF:
            raise OutputError(f"BIGTIFF option {bigtiff!r} is not one of {sorted(_BIGTIFF)}.")
        if not (str(num_threads).upper() == "ALL_CPUS" or (str(num_threads).isdigit() and int(num_threads) > 0)):
            raise OutputError(f"num_threads must be a positive integer or 'ALL_CPUS', got {num_threads!r}.")

        self.creation_options: dict[str, str] = {
            "TILED": "YES",
            "BLOCKXSIZE": str(self.tile),
            "BLOCKYSIZE": str(self.tile),
            "INTERLEAVE": "BAND",
            "BIGTIFF": str(bigtiff).upper(),
            "NUM_THREADS": str(num_threads).upper(),
        }
        if _COMPRESS[key]:
            self.creation_options["COMPRESS"] = _COMPRESS[key]
            self.creation_options["PREDICTOR"] = "3" if self.dtype == "float32" else "2"

        self.crs = CRS.from_user_input(crs)
        self.transform = transform
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise OutputError(f"The output grid {self.height} x {self.width} is empty.")
        self.tags = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (tags or {}).items()}
        self.parameters = dict(parameters) if parameters is not None else None
        self.overwrite = overwrite
        self.inputs = tuple(inputs)
        self.path = check_output_path(path, overwrite=overwrite, inputs=self.inputs)
        self.temp_path: Path | None = None
        self._ds = None
        self._pixels_written = 0

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "HSIWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def open(self) -> None:
        """Create the temporary GeoTIFF next to the output and write its metadata."""
        if self._ds is not None:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.geolift-tmp-", dir=self.path.parent)
            os.close(fd)
            # mkstemp makes the file private (0600); the output should get the usual permissions of a
            # new file (0666 less the umask), as GDAL would give it, so others (QGIS, a web server) can read it.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        except OSError as exc:
            raise OutputError(f"Cannot create a file in {self.path.parent} ({exc.strerror}).") from exc
        self.temp_path = Path(tmp)
        profile = {
            "driver": "GTiff",
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype,
            "crs": self.crs,
            "transform": self.transform,
            "nodata": self.nodata,
        }
        options = {k.lower(): v for k, v in self.creation_options.items()}
        try:
            self._ds = rasterio.open(self.temp_path, "w", **profile, **options)
            self._write_metadata()
        except RasterioError as exc:
            self.abort()
            raise OutputError(f"Cannot create {self.path} ({str(exc).strip().splitlines()[0]}).") from exc

    def _write_metadata(self) -> None:
        ds = self._ds
        for i in range(self.count):
            wl = self.wavelengths_nm[i]
            name = _DESC_SUFFIX.sub("", self.band_names[i]) if self.band_names else ""
            ds.set_band_description(i + 1, f"{name or f'band {i + 1}'} ({_fmt(wl)} nm)")
            band_tags = {"wavelength": _fmt(wl), "wavelength_units": "Nanometers"}
            imagery = {"CENTRAL_WAVELENGTH_UM": _fmt(wl / 1000.0)}
            if self.fwhm_nm is not None:
                band_tags["fwhm"] = _fmt(self.fwhm_nm[i])
                imagery["FWHM_UM"] = _fmt(self.fwhm_nm[i] / 1000.0)
            if self.good_bands is not None:
                band_tags["bbl"] = "1" if self.good_bands[i] else "0"
            ds.update_tags(i + 1, **band_tags)
            ds.update_tags(i + 1, ns="IMAGERY", **imagery)
        if self.dtype == "int16" and (self.scale != 1.0 or self.offset != 0.0):
            ds.scales = (self.scale,) * self.count
            ds.offsets = (self.offset,) * self.count
        dataset_tags = dict(self.tags)
        dataset_tags["geolift_version"] = _geolift_version()
        dataset_tags["wavelength_units"] = "Nanometers"
        if self.parameters is not None:
            dataset_tags["geolift_parameters"] = json.dumps(self.parameters, sort_keys=True, default=str)
        ds.update_tags(**dataset_tags)

    def update_tags(self, **tags: Any) -> None:
        """Add dataset tags known only once the blocks are written (e.g. a run report)."""
        if self._ds is None:
            raise RuntimeError("HSIWriter is not open; use it as a context manager")
        self._ds.update_tags(**{str(k): v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})

    def block_windows(self, blocks_per_side: int = 1) -> Iterator[Window]:
        """Tile-aligned windows (``blocks_per_side`` tiles square) covering the output, row by row."""
        return block_windows(self.width, self.height, self.tile * max(1, int(blocks_per_side)))

    def write_block(self, block: np.ndarray, window: Window | tuple) -> None:
        """Write float values ``(count, rows, cols)`` (NaN = nodata) into ``window`` of the output."""
        if self._ds is None:
            raise RuntimeError("HSIWriter is not open; use it as a context manager")
        if not isinstance(window, Window):
            window = Window.from_slices(*window)
        col, row = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        if col < 0 or row < 0 or col + w > self.width or row + h > self.height:
            raise ValueError(f"window {window} is not inside the {self.height} x {self.width} output")
        block = np.asarray(block)
        if block.shape != (self.count, h, w):
            raise ValueError(f"block has shape {block.shape}, expected {(self.count, h, w)}")
        data = self._encode(block)
        try:
            self._ds.write(data, window=Window(col, row, w, h))
        except RasterioError as exc:
            raise OutputError(f"Writing {self.path} failed ({str(exc).strip().splitlines()[0]}).") from exc
        self._pixels_written += w * h

    def _encode(self, block: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            data = block.astype(np.float32, copy=True)
            if not math.isnan(self.nodata):
                data[np.isnan(data)] = self.nodata
            return data
        # A few bands at a time, in place, in float32 (exact to well under 0.01 of a step in the int16 range):
        # temporaries of 16 bands, not float64 copies of the whole block (1.4 GB for 512 x 512 x 200), and about
        # 4x faster than float64 band by band, which matters because encoding runs on the writing thread.
        out = np.empty(block.shape, dtype=np.int16)
        nd = self.nodata
        for b in range(0, block.shape[0], _ENCODE_BANDS):
            values = np.array(block[b:b + _ENCODE_BANDS], dtype=np.float32)
            if self.offset != 0.0:
                values -= np.float32(self.offset)
            values /= np.float32(self.scale)
            invalid = ~np.isfinite(values)
            np.rint(values, out=values)
            np.clip(values, _INT16_MIN, _INT16_MAX, out=values)
            values[values == nd] = nd + 1 if nd < _INT16_MAX else nd - 1  # a valid value never reads as nodata
            values[invalid] = nd
            out[b:b + _ENCODE_BANDS] = values
        return out

    def commit(self) -> Path:
        """Close the temporary file and move it onto the output path; return the output path."""
        if self._ds is None:
            raise RuntimeError("HSIWriter is not open")
        if self._pixels_written < self.width * self.height:
            logger.warning(
                "%s: only %d of %d pixels were written; the rest is nodata",
                self.path, self._pixels_written, self.width * self.height,
            )
        try:
            self._ds.close()
        except RasterioError as exc:
            self._ds = None
            self.abort()
            raise OutputError(f"Finishing {self.path} failed ({str(exc).strip().splitlines()[0]}).") from exc
        self._ds = None
        if self.path.exists() and not self.overwrite:
            self.abort()
            raise OutputError(f"Output {self.path} appeared while geolift was writing it; nothing was replaced.")
        try:
            os.replace(self.temp_path, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"Cannot move the finished file onto {self.path} ({exc.strerror}).") from exc
        aux = Path(str(self.temp_path) + ".aux.xml")
        if aux.exists():
            os.replace(aux, Path(str(self.path) + ".aux.xml"))
        self.temp_path = None
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (and any sidecar); the output path is left as it was."""
        if self._ds is not None:
            try:
                self._ds.close()
            except RasterioError:
                pass
            self._ds = None
        if self.temp_path is not None:
            for p in (self.temp_path, Path(str(self.temp_path) + ".aux.xml")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            self.temp_path = None


def write_hsi(path: PathLike, cube: np.ndarray, **kwargs: Any) -> Path:
    """Write a whole ``(count, rows, cols)`` float cube with ``HSIWriter`` (same keyword arguments)."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (bands, rows, cols), got shape {cube.shape}")
    kwargs.setdefault("width", cube.shape[2])
    kwargs.setdefault("height", cube.shape[1])
    with HSIWriter(path, **kwargs) as writer:
        for window in writer.block_windows(blocks_per_side=4):
            r, c = window.toslices()
            writer.write_block(cube[:, r, c], window)
    return writer.path
