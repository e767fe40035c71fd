"""Reading: a raster, or a stack of band files, described as one :class:`Scene` and read window by window.

Opening inspects metadata only (plus a cheap decimated look at the data); pixels are read later with
:meth:`Scene.read` as float32 with NaN for nodata and the file's scale/offset applied. A ``Scene`` keeps no file
open, so it pickles (Dask) and leaks nothing. The rules (band stacking, nodata, scale, bad bands) are in
:mod:`geolift.io`'s docstring.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window

from geolift.errors import InputError, MetadataError
from geolift.grid import block_windows
from geolift.io.paths import PathLike, band_token, is_remote, resolve_input
from geolift.io.spectral import SpectralMetadata, spectral_metadata

__all__ = ["MaskLayer", "PixelSource", "Scene", "open_scene"]

_RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
}

#: Float32 bytes read at a time from one file when a window is large (see ``Scene._row_strips``).
READ_STRIP_BYTES = 64 * 2**20


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


class PixelSource(Protocol):
    """Raw pixels on the scene grid that GDAL cannot hand over as a plain ``(bands, rows, cols)`` raster.

    A product whose cube is stored band-interleaved by line (PRISMA's HDF5) or in swath geometry with a lookup
    table to the map grid (EMIT) reads through one of these. It must pickle (scenes travel to Dask workers).
    """

    def read(self, bands: Sequence[int] | None, window: Window) -> np.ndarray:
        """Raw values of 1-based ``bands`` (None: all) in ``window`` as ``(bands, rows, cols)``, the file's own
        type, in a new array (the caller may write to it)."""
        ...


@dataclass(frozen=True)
class _FileBands:
    """Where some of a scene's bands live: one file, its 1-based band indexes, how to read it."""

    path: str
    bands: tuple[int, ...]
    on_grid: bool  # the file's grid is the scene grid: read directly, no warping
    use_mask: bool  # honour the file's per-dataset mask / alpha band
    resampling: str  # used to warp files that are not on the scene grid
    source: PixelSource | None = None  # reads the pixels instead of GDAL's plain raster view of ``path``


@dataclass(frozen=True)
class MaskLayer:
    """A product's quality layer: pixels where any of its bands is flagged are left out.

    A value is flagged when it is non-zero; with ``bits``, when it has any of those bits set (a packed quality
    word); with ``values``, when it is one of those classes (a scene classification). A layer on another grid than
    the scene's (Sentinel-2's 20 m SCL under 10 m bands) is warped onto it, nearest neighbour. ``source`` reads it
    where GDAL alone cannot (see :class:`PixelSource`; then it is on the scene grid).
    """

    name: str  # what it flags: "cloud", "cloud shadow", ...
    path: str  # a single- or multi-band raster (GDAL path)
    bits: int | None = None
    source: PixelSource | None = None
    bands: tuple[int, ...] | None = None  # 1-based bands of ``path``/``source`` to look at; None: all
    values: tuple[int, ...] | None = None


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
    named_bands: tuple[bool, ...]  # False where band_names holds only a position ("band 3"), not a name
    descriptions: tuple[str, ...]
    tags: dict[str, str]
    wavelength_source: str | None = None
    files: tuple[_FileBands, ...] = field(default=(), repr=False)
    masks: tuple[MaskLayer, ...] = ()  # quality layers of a product: their flagged pixels read as nodata

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

    def take_bands(self, indices: Sequence[int]) -> Scene:
        """The scene restricted to some of its bands (0-based, in the order given), e.g. one detector's."""
        idx = [int(i) for i in self._band_indices(indices)]
        band_file = self._band_to_file()
        files = []
        for file_no, fb in enumerate(self.files):
            kept = tuple(fb.bands[band_file[b][1]] for b in idx if band_file[b][0] == file_no)
            if kept:
                files.append(replace(fb, bands=kept))
        order = [b for file_no in range(len(self.files)) for b in idx if band_file[b][0] == file_no]
        if order != idx:
            raise ValueError("take_bands keeps the bands of each file together, in file order")

        def pick(values):
            return None if values is None else tuple(values[b] for b in idx)

        def pick_array(values):
            return None if values is None else np.asarray(values)[idx]

        return replace(self, count=len(idx), dtypes=pick(self.dtypes), nodata=pick(self.nodata),
                       scales=pick_array(self.scales), offsets=pick_array(self.offsets),
                       wavelengths_nm=pick_array(self.wavelengths_nm), fwhm_nm=pick_array(self.fwhm_nm),
                       good_bands=pick_array(self.good_bands), band_names=pick(self.band_names),
                       named_bands=pick(self.named_bands), descriptions=pick(self.descriptions),
                       paths=tuple(dict.fromkeys(fb.path for fb in files)), files=tuple(files),
                       tags=dict(self.tags))

    def regrid(self, resolution: float) -> Scene:
        """The scene on a grid of ``resolution`` (CRS units) from the same corner: each band file is read onto it,
        averaged when it is finer (Sentinel-2's 10 m bands on a 20 m grid), resampled as before when coarser."""
        if resolution <= 0 or abs(self.transform.b) > 0 or abs(self.transform.d) > 0:
            raise InputError(f"Cannot put {self.path} on a {resolution:g} grid (a positive size on a north-up grid).")
        if abs(resolution - self.res[0]) <= 1e-9 * resolution and abs(resolution - self.res[1]) <= 1e-9 * resolution:
            return self
        width = int(self.width * self.res[0] / resolution + 1e-9)
        height = int(self.height * self.res[1] / resolution + 1e-9)
        if width < 1 or height < 1:
            raise InputError(f"A {resolution:g} grid is coarser than the whole of {self.path}.")
        transform = Affine(resolution, 0.0, self.transform.c, 0.0, math.copysign(resolution, self.transform.e),
                           self.transform.f)
        files = []
        for fb in self.files:
            if fb.source is not None:
                raise InputError(f"{self.path} is read through a lookup table and cannot be put on another grid.")
            with _open_raster(fb.path) as ds:
                file_res, same = abs(ds.transform.a), (ds.width, ds.height) == (width, height) and \
                    ds.transform.almost_equals(transform, precision=1e-6 * resolution)
            files.append(replace(fb, on_grid=same,
                                 resampling="average" if file_res < resolution * (1 - 1e-9) else fb.resampling))
        return replace(self, transform=transform, width=width, height=height, files=tuple(files), tags=dict(self.tags))

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
        for mask in self.masks:
            out[:, self.flagged(mask, win, (rows, cols))] = np.nan
        return out

    def flagged(self, mask: MaskLayer, window: Window, shape: tuple[int, int]) -> np.ndarray:
        """``shape`` bool: the pixels of ``window`` that ``mask`` flags (nearest-neighbour when resampled)."""
        try:
            if mask.source is not None:
                flags = _nearest(mask.source.read(mask.bands, window), shape)
            else:
                with _open_raster(mask.path) as ds:
                    bands = list(mask.bands or range(1, ds.count + 1))
                    on_grid = (ds.width, ds.height) == (self.width, self.height) and ds.transform.almost_equals(
                        self.transform, precision=1e-6 * abs(self.transform.a))
                    if on_grid or not self._is_georeferenced(ds):
                        flags = ds.read(bands, window=window, out_shape=(len(bands), *shape),
                                        resampling=Resampling.nearest)
                    else:
                        with WarpedVRT(ds, crs=self.crs, transform=self.transform, width=self.width,
                                       height=self.height, resampling=Resampling.nearest) as vrt:
                            flags = vrt.read(bands, window=window, out_shape=(len(bands), *shape),
                                             resampling=Resampling.nearest)
        except RasterioError as exc:
            raise InputError(f"Reading the {mask.name} mask {mask.path} failed ({str(exc).splitlines()[0]}).") from exc
        if mask.values is not None:
            return np.isin(flags, np.asarray(mask.values)).any(axis=0)
        if mask.bits is not None:
            flags = flags & np.array(mask.bits).astype(flags.dtype)
        return (flags != 0).any(axis=0)

    @staticmethod
    def _is_georeferenced(ds) -> bool:
        """A mask without a CRS (an HDF5 dataset of a product) is taken to be on the scene grid."""
        return ds.crs is not None and not ds.transform.is_identity

    def _row_strips(self, fb: _FileBands, win: Window, n_bands: int) -> list[tuple[int, int]]:
        """Row ranges (relative to ``win``) that read a large window in pieces of about
        :data:`READ_STRIP_BYTES` as float32, cut on the file's block rows.

        Each piece reopens the file, so GDAL's block cache and the raw and float temporaries hold one
        strip, not the whole window: reading a full EnMAP scene (0.8 GB as float32) needed 2.2 GB at
        once, and the freed blocks stayed in the process's heap (0.4 GB) for the rest of the run.
        """
        row_bytes = 4 * n_bands * int(win.width)
        if row_bytes * win.height <= READ_STRIP_BYTES or not fb.on_grid or fb.source is not None:
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
            if fb.source is not None:
                data = _float_with_nan(fb.source.read(file_bands, win), nodata)
                return data if data.shape == out_shape else self._resample(data, win, shape, method)
            with _open_raster(fb.path) as ds:
                if fb.on_grid:
                    raw = ds.read(file_bands, window=win, out_shape=out_shape, resampling=method)
                    invalid = _nodata_pixels(raw, nodata)
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

    def _resample(self, data: np.ndarray, win: Window, shape: tuple[int, int], method: Resampling) -> np.ndarray:
        """``data`` (a window read at full resolution) on a ``shape`` grid over the same window, NaN-aware."""
        out = np.full((data.shape[0], *shape), np.nan, dtype=np.float32)
        src_transform = self.window_transform(win)
        dst_transform = src_transform @ Affine.scale(win.width / shape[1], win.height / shape[0])
        reproject(data, out, src_transform=src_transform, dst_transform=dst_transform, src_crs=self.crs,
                  dst_crs=self.crs, src_nodata=np.nan, dst_nodata=np.nan, resampling=method)
        return out

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


def _nodata_pixels(raw: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    """Where each band of ``raw`` holds its nodata value, compared in the file's type (exact for any integer)."""
    invalid = np.zeros(raw.shape, dtype=bool)
    for k, nd in enumerate(nodata):
        if _representable(nd, raw.dtype):
            invalid[k] = raw[k] == np.array(nd).astype(raw.dtype)
    return invalid


def _float_with_nan(raw: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    invalid = _nodata_pixels(raw, nodata)
    data = raw.astype(np.float32, copy=False)
    data[invalid] = np.nan
    return data


def _nearest(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(bands, rows, cols)`` ``data`` on a ``shape`` grid over the same extent, nearest neighbour."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * data.shape[1] / shape[0], data.shape[1] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * data.shape[2] / shape[1], data.shape[2] - 1).astype(int)
    return data[:, rows][:, :, cols]


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
    spectral: SpectralMetadata
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
            spectral=spectral_metadata(ds, path, bands),
            tags=tags,
            use_mask=use_mask,
        )


def _same_grid(a: _FileInfo, b: _FileInfo) -> bool:
    """Same size and geotransform (to a millionth of a pixel): read directly instead of warping."""
    return (a.width, a.height) == (b.width, b.height) and a.transform.almost_equals(
        b.transform, precision=1e-6 * abs(b.transform.a)
    )


def _band_name(info: _FileInfo, k: int, *, in_list: bool) -> tuple[str, bool]:
    """A label for band ``k`` of a file, and whether it is a name (file-name token, description, a single-band
    file's stem) rather than a position (``band 3``), which says nothing about what the band holds."""
    if in_list and len(info.bands) == 1:
        return band_token(info.path) or info.descriptions[0] or Path(info.path).stem, True
    if info.descriptions[k]:
        return info.descriptions[k], True
    return (f"{Path(info.path).stem} band {k + 1}" if in_list else f"band {k + 1}"), False


def open_scene(
    source: PathLike | Sequence[PathLike],
    *,
    require_wavelengths: bool = False,
    nodata: float | None = None,
    resampling: str = "bilinear",
    check_data: bool = True,
    overlap: str = "keep",
) -> Scene:
    """Describe a raster or a list of band files as one ``Scene`` (metadata only; see the module docstring).

    ``require_wavelengths=True`` (the LR-HSI) raises ``MetadataError`` when no wavelength is found;
    ``nodata`` overrides the files' nodata value; ``resampling`` warps coarser band files onto the
    finest grid; ``check_data`` refuses a scene whose good bands hold only nodata; ``overlap`` picks the bands
    where a product's two detectors overlap ("keep" both, "vnir" or "swir"; plain rasters have no detectors).
    """
    single = isinstance(source, (str, os.PathLike))
    raw_paths = [source] if single else list(source)
    if len(raw_paths) == 1 and isinstance(raw_paths[0], (str, os.PathLike)):  # a product is one path, alone
        from geolift.io.products import open_product  # products build on this module

        product = open_product(raw_paths[0], require_wavelengths=require_wavelengths, check_data=check_data,
                               overlap=overlap)
        if product is not None:
            return product
    if not raw_paths:
        raise InputError("No input file given.")
    _resampling(resampling)  # fail early on a bad name
    resolved = [resolve_input(p) for p in raw_paths]
    paths = [p if is_remote(p) else Path(p) for p in resolved]
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

    labels = [_band_name(info, k, in_list=not single) for info in infos for k in range(len(info.bands))]

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
        band_names=tuple(name for name, _ in labels),
        named_bands=tuple(named for _, named in labels),
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
