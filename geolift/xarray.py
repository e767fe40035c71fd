"""geolift for xarray users: scenes as lazy ``DataArray`` s in, a lazy fused ``DataArray`` out.

* :func:`open_hsi` / :func:`open_msi` read a scene with geolift's own reader (:func:`geolift.io.open_scene`: GeoTIFF,
  ENVI, band-file lists, the satellite products of ``docs/products.md``) into a ``DataArray`` ``(band, y, x)``,
  Dask-backed (chunks aligned to the file's blocks, or ``chunks=``), with the ``rio`` CRS and transform, the band
  names as the ``band`` coordinate and ``wavelength`` / ``fwhm`` (nm) as coordinates on ``band``.
* :func:`fuse` trains the model and runs pass 1 of the consistency step when it is called (through
  :func:`geolift.fuse.prepare_fusion`, the pipeline ``geolift fuse`` runs), and returns a lazy ``DataArray`` on the
  MSI grid whose every chunk is :meth:`geolift.fuse.FusionPlan.predict_window` of that chunk's window (pass 2:
  the network plus the correction). Every step is per-pixel exact, so each chunk holds the values
  ``geolift fuse --dtype float32`` writes for those pixels, bit for bit, whatever the chunking.
* :func:`to_geotiff` (also ``da.geolift.to_geotiff``) writes such a ``DataArray`` with geolift's writer: the same
  encoding, band metadata and tags as ``geolift fuse``, optionally a COG and a STAC Item (:mod:`geolift.stac`).

Values follow the convention of rioxarray's ``masked=True``: float32, scale and offset applied (the units the CLI
uses), nodata as NaN; ``rio.nodata`` is NaN and ``rio.encoded_nodata`` the file's nodata value when it has one.
``docs/xarray.md`` walks through the whole path and explains the design.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from dask.highlevelgraph import HighLevelGraph
from dask.tokenize import tokenize
from rasterio.windows import Window
from rioxarray.exceptions import RioXarrayError

from geolift import fuse as pipeline
from geolift.errors import InputError, MetadataError
from geolift.grid import Grid
from geolift.io import Encoding, HSIWriter, OutputBands, Scene, is_remote, open_scene
from geolift.io.gdal_options import GDAL_ERRORS

__all__ = ["DEFAULT_CHUNK", "GeoliftAccessor", "band_attrs", "chunks_predicted", "fuse", "open_hsi", "open_msi",
           "to_geotiff"]

#: Rows and columns of a chunk when neither ``chunks=`` nor the file's blocks say otherwise.
DEFAULT_CHUNK = 512
#: Attribute holding how a DataArray was opened (JSON), so :func:`fuse` can hand the file itself to the pipeline.
SOURCE_ATTR = "geolift_source"
#: Attribute holding how :func:`to_geotiff` stores values by default (JSON: dtype, scale, offset).
ENCODING_ATTR = "geolift_encoding"
_NM = {"units": "nm"}


# --------------------------------------------------------------------------------------------------- reading

class _SceneReader:
    """What :func:`dask.array.from_array` slices: a :class:`Scene` read window by window (picklable, no open file)."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.shape = (scene.count, scene.height, scene.width)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        bands, rows, cols = (range(*k.indices(n)) for k, n in zip(key, self.shape))
        if rows.step != 1 or cols.step != 1:
            raise IndexError("geolift reads contiguous windows only")
        if not len(bands) or not len(rows) or not len(cols):
            return np.empty((len(bands), len(rows), len(cols)), np.float32)
        window = Window(cols.start, rows.start, len(cols), len(rows))
        return self.scene.read(window=window, bands=list(bands))


def _chunk_shape(chunks: int | tuple[int, int]) -> tuple[int, int]:
    """``chunks`` (one size, or rows and cols) as positive (rows, cols); ``InputError`` otherwise."""
    try:
        rows, cols = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else chunks
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise InputError(f"chunks must be a number of pixels or (rows, cols), got {chunks!r}.") from None
    if rows < 1 or cols < 1:
        raise InputError(f"chunks must be at least one pixel each way, got {chunks!r}.")
    return rows, cols


def _file_chunks(scene: Scene, chunks: int | tuple[int, int] | None) -> tuple[int, int]:
    """(rows, cols) of a chunk: ``chunks`` as given, else a multiple of the (first) file's blocks near 512 px."""
    if chunks is not None:
        return _chunk_shape(chunks)
    block = (DEFAULT_CHUNK, DEFAULT_CHUNK)
    if len(scene.files) == 1 and scene.files[0].on_grid and scene.files[0].source is None:
        try:
            with rasterio.open(scene.files[0].path) as ds:
                block = ds.block_shapes[0]
        except GDAL_ERRORS:
            pass
    return tuple(max(b, (DEFAULT_CHUNK // b) * b) for b in block)  # type: ignore[return-value]


def _centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    return y, x


def _band_labels(names: Sequence[str], named: Sequence[bool]) -> list[Any]:
    """The band names when every band has one and they are unique, else 1..C (rioxarray's labels)."""
    if all(named) and len(set(names)) == len(names):
        return list(names)
    return list(range(1, len(names) + 1))


def _spatial(da: xr.DataArray, crs: Any, transform: Affine) -> xr.DataArray:
    da = da.rio.write_crs(crs).rio.write_transform(transform)
    if "wavelength" in da.coords:
        da = da.set_xindex("wavelength")  # .sel(wavelength=560, method="nearest")
    return band_attrs(da)


def band_attrs(da: xr.DataArray) -> xr.DataArray:
    """``da`` with the per-band attributes ``rio.to_raster`` writes (rioxarray's conventions) rebuilt from its
    ``band``, ``wavelength``, ``fwhm`` and ``good_band`` coordinates: ``long_name`` (band descriptions, e.g.
    ``"band 12 (512.3 nm)"``) and ``band_tags`` (``wavelength``, ``fwhm``, ``wavelength_units``, ``bbl``, as geolift's
    own GeoTIFFs carry them). Attributes do not follow a selection of bands: call this again after one."""
    if "band" not in da.dims:
        return da
    labels = [v.item() if hasattr(v, "item") else v for v in da["band"].values]
    coords = da.coords
    wl = np.asarray(coords["wavelength"], np.float64) if "wavelength" in coords else None
    fwhm = np.asarray(coords["fwhm"], np.float64) if "fwhm" in coords else None
    good = np.asarray(coords["good_band"], bool) if "good_band" in coords else None
    names, tags = [], []
    for i, label in enumerate(labels):
        text = f"band {label}" if isinstance(label, (int, np.integer)) else str(label)
        if wl is not None and not text.endswith(")"):
            text += f" ({wl[i]:.7g} nm)"
        names.append(text)
        band: dict[str, str] = {}
        if wl is not None:
            band |= {"wavelength": f"{wl[i]:.7g}", "wavelength_units": "Nanometers"}
        if fwhm is not None and np.isfinite(fwhm[i]):
            band["fwhm"] = f"{fwhm[i]:.7g}"
        if good is not None:
            band["bbl"] = "1" if good[i] else "0"
        tags.append(band)
    return da.assign_attrs(long_name=tuple(names), band_tags=tags)


def _open(source: Any, role: str, *, chunks: int | tuple[int, int] | None, lazy: bool,
          **read: Any) -> xr.DataArray:
    scene = open_scene(source, **read)
    sources = [_absolute(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    rows, cols = _file_chunks(scene, chunks)
    name = f"geolift-{role}-" + tokenize(sources, read, scene.paths, [_mtime(p) for p in scene.paths], rows, cols)
    if lazy:
        data = dsa.from_array(_SceneReader(scene), chunks=(scene.count, rows, cols), name=name, lock=False,
                              asarray=False, fancy=False, meta=np.empty((0, 0, 0), np.float32))
    else:
        data = scene.read()
    y, x = _centres(scene.transform, scene.width, scene.height)
    coords: dict[str, Any] = {"band": _band_labels(scene.band_names, scene.named_bands), "y": y, "x": x}
    if scene.wavelengths_nm is not None:
        coords["wavelength"] = ("band", np.asarray(scene.wavelengths_nm, np.float64), _NM)
    if scene.fwhm_nm is not None:
        coords["fwhm"] = ("band", np.asarray(scene.fwhm_nm, np.float64), _NM)
    coords["good_band"] = ("band", np.asarray(scene.good_bands, bool))
    attrs: dict[str, Any] = dict(scene.tags)  # the dataset's tags (a product's identity, e.g. acquisition_time)
    attrs |= {
        SOURCE_ATTR: json.dumps({"role": role, "source": sources, "read": read, "token": name if lazy else None}),
        "scene_dtype": scene.dtype,
    }
    if len(set(scene.scales.tolist())) == 1 and len(set(scene.offsets.tolist())) == 1:
        attrs["scene_scale"], attrs["scene_offset"] = float(scene.scales[0]), float(scene.offsets[0])
    da = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=attrs, name=role)
    da = _spatial(da, scene.crs, scene.transform)
    nodata = {v for v in scene.nodata}
    if len(nodata) == 1 and None not in nodata and not math.isnan(float(next(iter(nodata)))):
        da = da.rio.write_nodata(float(next(iter(nodata))), encoded=True)  # values are NaN; the file says -99
    else:
        da = da.rio.write_nodata(np.nan, encoded=False)
    return da


def _absolute(path: Any) -> str:
    return str(path) if is_remote(str(path)) else os.path.abspath(os.fspath(path))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None  # a remote path: its name stands for it


def open_hsi(source: Any, *, chunks: int | tuple[int, int] | None = None, lazy: bool = True,
             overlap: str = "keep", nodata: float | None = None) -> xr.DataArray:
    """The LR-HSI ``source`` (a raster, band files, or a product :func:`geolift.io.open_scene` reads) as a
    ``DataArray`` ``(band, y, x)``: float32, NaN nodata, wavelength coordinates required (``MetadataError``).

    Lazy (Dask chunks of every band and ``chunks`` rows/cols, by default the file's blocks near 512 px) unless
    ``lazy=False``. ``overlap`` picks a two-detector product's overlap bands; ``nodata`` overrides the file's.
    """
    return _open(source, "hsi", chunks=chunks, lazy=lazy, require_wavelengths=True, overlap=overlap, nodata=nodata)


def open_msi(source: Any, *, chunks: int | tuple[int, int] | None = None, lazy: bool = True,
             nodata: float | None = None) -> xr.DataArray:
    """The HR-MSI ``source`` as a ``DataArray`` ``(band, y, x)`` (see :func:`open_hsi`; wavelengths optional)."""
    return _open(source, "msi", chunks=chunks, lazy=lazy, nodata=nodata)


# --------------------------------------------------------------------------------------------------- inputs

class _ScratchFolder:
    """A temporary folder for inputs written out for the pipeline; removed when the last reference in the process
    that made it goes (the lazy result's graph keeps one). Pickles as its path only."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="geolift-xarray-"))
        self._owner = os.getpid()

    def __reduce__(self):
        return (_existing_folder, (str(self.path),))

    def __del__(self) -> None:
        if getattr(self, "_owner", None) == os.getpid():
            shutil.rmtree(self.path, ignore_errors=True)


def _existing_folder(path: str) -> _ScratchFolder:
    folder = _ScratchFolder.__new__(_ScratchFolder)
    folder.path, folder._owner = Path(path), None
    return folder


def _check_raster(da: Any, role: str, *, spectral: bool) -> None:
    what = {"hsi": "The HSI", "msi": "The MSI", "output": "The array"}[role]
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{what} must be an xarray.DataArray, got {type(da).__name__}.")
    if da.dims != ("band", "y", "x"):
        raise InputError(f"{what} must have the dimensions (band, y, x), got {da.dims}; use .transpose() or "
                         ".expand_dims('band').")
    if da.rio.crs is None:
        raise MetadataError(f"{what} has no CRS; set one with .rio.write_crs(...).")
    if da.sizes["y"] < 1 or da.sizes["x"] < 1:
        raise InputError(f"{what} is empty ({da.sizes['y']} x {da.sizes['x']} px).")
    if spectral:
        wl = da.coords.get("wavelength")
        if wl is None or wl.dims != ("band",) or not np.isfinite(np.asarray(wl, np.float64)).all():
            raise MetadataError(f"{what} needs a 'wavelength' coordinate (nm) on 'band' with a value for every band.")


def _source_of(da: xr.DataArray, role: str) -> dict[str, Any] | None:
    """How ``da`` was opened, when it is exactly what :func:`open_hsi` / :func:`open_msi` returned (same dask graph:
    any selection, arithmetic or new chunking makes a new one); None otherwise."""
    try:
        source = json.loads(da.attrs.get(SOURCE_ATTR, ""))
    except ValueError:
        return None
    data = da.data
    if (not isinstance(source, dict) or source.get("role") != role or not source.get("token")
            or not isinstance(data, dsa.Array) or data.name != source["token"]
            or (source.get("read") or {}).get("nodata") is not None):  # the pipeline reads with the files' nodata
        return None
    return source


def _transform(da: xr.DataArray) -> Affine:
    """The geotransform of ``da``'s pixels, exact where it can be: the transform written with the array (``rio``'s
    ``GeoTransform``) moved by whole pixels to where the ``x``/``y`` coordinates start (a window of the array keeps
    its parent's transform); otherwise the one rioxarray derives from the coordinates."""
    try:
        derived = da.rio.transform(recalc=True)
        written = da.rio.transform(recalc=False)
    except (RioXarrayError, ValueError, IndexError) as exc:  # coordinates that make no regular grid
        raise MetadataError(f"Cannot derive a geotransform from the array's x/y coordinates ({exc}).") from None
    x, y = np.asarray(da["x"], np.float64), np.asarray(da["y"], np.float64)
    col = (x[0] - written.c) / written.a - 0.5
    row = (y[0] - written.f) / written.e - 0.5
    same_pixels = np.isclose([derived.a, derived.e], [written.a, written.e], rtol=1e-9, atol=0).all()
    if same_pixels and abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
        return written @ Affine.translation(round(col), round(row))
    return derived


def _write_input(da: xr.DataArray, path: Path) -> Path:
    """Write ``da`` as a float32 GeoTIFF (NaN nodata, wavelengths as band tags) the pipeline reads back exactly."""
    grid = Grid(da.rio.crs, _transform(da), da.sizes["x"], da.sizes["y"])
    coords = da.coords
    wl = np.asarray(coords["wavelength"], np.float64) if "wavelength" in coords else None  # checked for the HSI
    if wl is not None and not np.isfinite(wl).all():
        wl = None  # an MSI with some band centres unknown: its band names (and --sensor/--bands) say what it holds
    fwhm = np.asarray(coords["fwhm"], np.float64) if "fwhm" in coords and wl is not None else None
    if fwhm is not None and not np.isfinite(fwhm).all():
        fwhm = None
    names = [str(v) for v in da["band"].values]
    good = np.asarray(coords["good_band"], bool) if "good_band" in coords else None
    bands = OutputBands(wl, fwhm, names, good)
    with HSIWriter(path, grid, bands, Encoding(dtype="float32"), overwrite=True) as writer:
        for window, block in _blocks(da):
            writer.write_block(block, window)
    return path


def _blocks(da: xr.DataArray, batch: int = 4):
    """``(window, float32 block)`` over ``da``'s chunks (each computed once, ``batch`` at a time)."""
    data = da.data
    if not isinstance(data, dsa.Array):
        data = dsa.from_array(np.asarray(data), chunks=(-1, DEFAULT_CHUNK, DEFAULT_CHUNK))
    data = data.rechunk({0: -1})
    row_edges = np.cumsum((0, *data.chunks[1]))
    col_edges = np.cumsum((0, *data.chunks[2]))
    cells = [(i, j) for i in range(len(data.chunks[1])) for j in range(len(data.chunks[2]))]
    blocks = data.to_delayed()
    for start in range(0, len(cells), batch):
        group = cells[start:start + batch]
        values = dask.compute(*[blocks[0, i, j] for i, j in group])
        for (i, j), block in zip(group, values):
            window = Window(int(col_edges[j]), int(row_edges[i]), int(col_edges[j + 1] - col_edges[j]),
                            int(row_edges[i + 1] - row_edges[i]))
            yield window, np.asarray(block, np.float32)


# --------------------------------------------------------------------------------------------------- fusing

_COUNT_LOCK = threading.Lock()
_predicted = [0]  # chunks :func:`_fused_block` has predicted in this process
#: Called with each chunk's window of the output grid once it is predicted (in the process that computes it): a hook
#: for tests and for watching what a computation touches. None: nothing is called.
on_chunk: Callable[[Window], None] | None = None


def _fused_block(plan: pipeline.FusionPlan, row0: int, row1: int, col0: int, col1: int, *_: Any) -> np.ndarray:
    """Pass 2 for one chunk: the network plus the consistency correction (:meth:`FusionPlan.predict_window`)."""
    window = Window(col0, row0, col1 - col0, row1 - row0)
    block = plan.predict_window(window)[0]
    with _COUNT_LOCK:
        _predicted[0] += 1
    if on_chunk is not None:
        on_chunk(window)
    return block


def chunks_predicted() -> int:
    """How many chunks of fused results this process has computed so far (each one network pass)."""
    return _predicted[0]


def _options(sensor: str | None, bands: str | Sequence[str] | None, options: dict[str, Any]) -> pipeline.FuseOptions:
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.replace(",", " ").split() if b.strip()]
    known = set(pipeline.FuseOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"Unknown fusion option(s) {', '.join(unknown)}; the options are FuseOptions' fields: "
                         f"{', '.join(sorted(known - {'sensor', 'bands'}))}.")
    if "creation_options" in options:
        options["creation_options"] = tuple(options["creation_options"])
    return pipeline.FuseOptions(sensor=sensor, bands=tuple(bands) if bands else None, **options)


def fuse(hsi: xr.DataArray, msi: xr.DataArray, sensor: str | None = None, bands: str | Sequence[str] | None = None,
         *, chunks: int | tuple[int, int] | None = None, **options: Any) -> xr.DataArray:
    """Fuse ``hsi`` (LR-HSI) and ``msi`` (HR-MSI) into a lazy HR-HSI ``DataArray`` on the MSI grid.

    ``sensor``/``bands`` name the MSI's response as in ``geolift fuse --sensor/--bands`` (``sensor=None``: the MSI's
    own wavelength/FWHM metadata); ``options`` are :class:`geolift.fuse.FuseOptions` fields (``steps``, ``seed``,
    ``preset``, ``align``, ``harmonize``, ``resolution``, ...; ``dtype``, ``compress``, ``cog``, ``tile_size`` only set
    what :func:`to_geotiff` writes by default). Training and pass 1 of the consistency step run now; each chunk
    (``chunks`` rows/cols, default ``tile_size``) is predicted when computed. Inputs straight from
    :func:`open_hsi`/:func:`open_msi` are read from their files; any other ``DataArray`` is first written to a
    temporary float32 GeoTIFF (removed with the result) so that the pipeline reads it as it reads any file.
    """
    _check_raster(hsi, "hsi", spectral=True)
    _check_raster(msi, "msi", spectral=False)
    if chunks is not None:
        _chunk_shape(chunks)  # a mistake stops the call before training
    opts = _options(sensor, bands, dict(options))
    pipeline.check_output_options(opts)
    scratch = None
    sources: dict[str, Any] = {}
    read: dict[str, dict[str, Any]] = {}
    for role, da in (("hsi", hsi), ("msi", msi)):
        source = _source_of(da, role)
        if source is not None:
            sources[role] = source["source"][0] if len(source["source"]) == 1 else source["source"]
            read[role] = source["read"]
            continue
        scratch = scratch or _ScratchFolder()
        sources[role] = str(_write_input(da, scratch.path / f"{role}.tif"))
    if read.get("hsi", {}).get("overlap") not in (None, opts.overlap) and "overlap" not in options:
        opts = pipeline.FuseOptions(**{**opts.__dict__, "overlap": read["hsi"]["overlap"]})
    plan = pipeline.prepare_fusion(sources["hsi"], sources["msi"], opts)
    if scratch is not None:  # the report names the inputs; temporary files are no input anyone can find again
        plan.report.hsi = [] if "hsi" not in read else plan.report.hsi
        plan.report.msi = [] if "msi" not in read else plan.report.msi
    encoding = None
    if "hsi" not in read and opts.dtype is None and np.dtype(hsi.attrs.get("scene_dtype", "float32")).kind in "iu":
        # the HSI went through a float32 file: store the output as the CLI would for the file it came from
        encoding = {"dtype": "int16", "scale": hsi.attrs.get("scene_scale", 1.0),
                    "offset": hsi.attrs.get("scene_offset", 0.0)}
    return _result(plan, chunks, scratch, encoding)


def _result(plan: pipeline.FusionPlan, chunks: int | tuple[int, int] | None, scratch: _ScratchFolder | None,
            encoding: dict[str, Any] | None = None) -> xr.DataArray:
    grid, scene = plan.grid, plan.hsi
    rows, cols = _chunk_shape(chunks if chunks is not None else plan.options.tile_size)
    row_edges = list(range(0, grid.height, int(rows))) + [grid.height]
    col_edges = list(range(0, grid.width, int(cols))) + [grid.width]
    plan_key = "geolift-plan-" + tokenize(id(plan), plan.report.options, grid.bounds, os.getpid())
    name = "geolift-fused-" + plan_key.rsplit("-", 1)[1] + f"-{rows}x{cols}"
    layer: dict[Any, Any] = {plan_key: plan}
    for i in range(len(row_edges) - 1):
        for j in range(len(col_edges) - 1):
            layer[(name, 0, i, j)] = (_fused_block, plan_key, row_edges[i], row_edges[i + 1], col_edges[j],
                                      col_edges[j + 1], scratch)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    chunk_sizes = ((scene.count,), tuple(np.diff(row_edges)), tuple(np.diff(col_edges)))
    data = dsa.Array(graph, name, chunk_sizes, meta=np.empty((0, 0, 0), np.float32))
    y, x = _centres(grid.transform, grid.width, grid.height)
    labels = np.arange(1, scene.count + 1)  # the GeoTIFF's bands: "band 12 (512.3 nm)"
    coords: dict[str, Any] = {"band": labels, "y": y, "x": x,
                              "wavelength": ("band", np.asarray(scene.wavelengths_nm, np.float64), _NM),
                              "good_band": ("band", np.asarray(scene.good_bands, bool))}
    if scene.fwhm_nm is not None:
        coords["fwhm"] = ("band", np.asarray(scene.fwhm_nm, np.float64), _NM)
    if encoding is None:
        chosen = pipeline.output_encoding(scene, plan.options)
        encoding = {"dtype": chosen.dtype, "scale": chosen.scale, "offset": chosen.offset}
    attrs = dict(pipeline.output_tags(plan))
    attrs |= {
        "geolift_parameters": json.dumps(plan.options.to_dict(), sort_keys=True, default=str),
        "geolift_report": pipeline._json(plan.report.to_dict()),
        "geolift_consistency": pipeline._json({"refined": plan.report.refined, "note": plan.report.refine_note,
                                               "psf": plan.report.psf}),
        "wavelength_units": "Nanometers",
        ENCODING_ATTR: json.dumps(encoding | {"tile": plan.options.tile_size, "compress": plan.options.compress,
                                              "cog": plan.options.cog, "num_threads": plan.options.num_threads,
                                              "options": list(plan.options.creation_options)}),
    }
    da = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=attrs, name="fused")
    return _spatial(da, grid.crs, grid.transform).rio.write_nodata(np.nan, encoded=False)


# --------------------------------------------------------------------------------------------------- writing

_NOT_TAGS = {"_FillValue", "long_name", "band_tags", "scale_factor", "add_offset", "units", "nodata", ENCODING_ATTR,
             SOURCE_ATTR, "scene_dtype", "scene_scale", "scene_offset"}


def to_geotiff(da: xr.DataArray, path: str | os.PathLike, *, dtype: str | None = None, cog: bool | None = None,
               stac: str | os.PathLike | None = None, stac_datetime: str | None = None, overwrite: bool = False,
               tile_size: int | None = None, compress: str | None = None,
               creation_options: Sequence[str] | None = None, num_threads: int | None = None) -> Path:
    """Write ``da`` (``(band, y, x)`` with a CRS and ``wavelength`` coordinates, e.g. :func:`fuse`'s result or a
    window of it) with geolift's writer, chunk by chunk, atomically: what ``geolift fuse`` would write for it.

    Each output choice left at None is the one :func:`fuse` was given (its ``dtype``, ``cog``, ``tile_size``,
    ``compress``, ``creation_options``, ``num_threads``), else the CLI's default: ``dtype`` as the CLI chooses it
    (``int16`` in the HSI's units for integer HSIs, else ``float32``), no COG, 512-px tiles, deflate, 2 threads.
    ``stac`` also writes a STAC Item of the file there (``stac_datetime`` as ``--stac-datetime``). Returns the path.
    """
    _check_raster(da, "output", spectral=True)
    path = Path(path)
    if stac is not None:
        from geolift.io import check_output_path
        from geolift.stac import parse_datetime_option

        if stac_datetime is not None:
            parse_datetime_option(stac_datetime)
        check_output_path(stac, overwrite=overwrite, inputs=[path])
    elif stac_datetime is not None:
        raise InputError("stac_datetime sets the time in the STAC Item; give stac= too.")
    try:
        chosen = json.loads(da.attrs.get(ENCODING_ATTR, "{}"))
    except ValueError:
        chosen = {}
    chosen = chosen if isinstance(chosen, dict) else {}
    dtype = dtype or chosen.get("dtype") or "float32"
    scaled = dtype == "int16" and chosen.get("dtype") == "int16"

    def pick(given: Any, key: str, default: Any) -> Any:
        return given if given is not None else chosen.get(key, default)

    encoding = Encoding(dtype=dtype, scale=chosen.get("scale") if scaled else None,
                        offset=chosen.get("offset") if scaled else None, tile=pick(tile_size, "tile", 512),
                        compress=pick(compress, "compress", "deflate"), num_threads=pick(num_threads, "num_threads", 2),
                        options=tuple(pick(creation_options, "options", ())), cog=pick(cog, "cog", False))
    coords = da.coords
    fwhm = np.asarray(coords["fwhm"], np.float64) if "fwhm" in coords else None
    good = np.asarray(coords["good_band"], bool) if "good_band" in coords else None
    labels = da["band"].values
    names = None if np.issubdtype(labels.dtype, np.integer) else [str(v) for v in labels]
    bands = OutputBands(np.asarray(coords["wavelength"], np.float64), fwhm, names, good)
    grid = Grid(da.rio.crs, _transform(da), da.sizes["x"], da.sizes["y"])
    tags = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in da.attrs.items()
            if k not in _NOT_TAGS and not k.startswith("geolift_version")}
    inputs = []
    try:
        report = json.loads(da.attrs.get("geolift_report", "{}"))
        inputs = [*report.get("hsi", []), *report.get("msi", [])]
    except (ValueError, AttributeError):
        pass
    with HSIWriter(path, grid, bands, encoding, tags=tags, overwrite=overwrite, inputs=inputs) as writer:
        for window, block in _blocks(da):
            writer.write_block(block, window)
    if stac is not None:
        from geolift.stac import write_item

        write_item(writer.path, stac, datetime=stac_datetime)
    return writer.path


@xr.register_dataarray_accessor("geolift")
class GeoliftAccessor:
    """``da.geolift``: :func:`to_geotiff`, the run report, :func:`band_attrs`."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def to_geotiff(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """:func:`to_geotiff` of this array."""
        return to_geotiff(self._da, path, **kwargs)

    @property
    def report(self) -> dict[str, Any]:
        """The fusion's report (what ``geolift fuse --report`` writes, as far as it is known before writing)."""
        try:
            return json.loads(self._da.attrs["geolift_report"])
        except (KeyError, ValueError):
            raise InputError("This array carries no geolift report (it does not come from geolift.xarray.fuse).") \
                from None

    def band_attrs(self) -> xr.DataArray:
        """:func:`band_attrs`: ``long_name``/``band_tags`` rebuilt from the coordinates (after selecting bands)."""
        return band_attrs(self._da)
