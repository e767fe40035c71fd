"""Writing: a fused HR-HSI streamed block by block into a tiled GeoTIFF that appears only once complete.

:class:`HSIWriter` takes where (a :class:`~geolift.grid.Grid`), what (:class:`OutputBands`: wavelengths, FWHM,
names, bad-band flags) and how (an :class:`~geolift.io.encoding.Encoding`), then blocks in any order, one at a
time or as an iterable. It writes into a hidden temporary file next to the output
(``.fused.tif.geolift-tmp-XXXX``) that replaces the output only when the ``with`` block ends without an
exception; otherwise the temporary file is removed, so a failure never leaves a truncated output.

With ``Encoding(cog=True)`` the finished temporary file gets internal overviews (averaged, halving until the
smallest fits in one tile, as GDAL's COG driver would make them) and is then copied by GDAL's COG driver, which
reorders it into the Cloud-Optimized GeoTIFF layout, into a second hidden temporary file that replaces the output.
GDAL streams both steps block by block through its cache (``GDAL_CACHEMAX``), so memory stays bounded; the disk
briefly holds the plain file with its overviews and the COG.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geolift import __version__
from geolift.errors import OutputError
from geolift.grid import Grid
from geolift.io.encoding import Encoding
from geolift.io.gdal_options import GDAL_ERRORS, gdal_message
from geolift.io.paths import NEW_FILE_MODE, PathLike, check_output_path

__all__ = ["HSIWriter", "OutputBands", "write_hsi"]

logger = logging.getLogger("geolift")

_DESC_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")


def _fmt(value: float) -> str:
    return f"{float(value):.7g}"


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}


@dataclass(frozen=True, eq=False)
class OutputBands:
    """The output's bands: centre wavelengths (nm), and optionally FWHM (nm), names and good-band flags; or, for
    bands that are not spectral (the QA layer), names alone, which become the band descriptions.

    Each band gets the description ``"band 12 (512.3 nm)"`` (a name replaces ``"band 12"``), band tags
    ``wavelength``, ``fwhm``, ``wavelength_units=Nanometers`` and ``bbl`` (EnMAP-Box and QGIS read these) and
    GDAL's ``IMAGERY`` ``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM``.
    """

    wavelengths_nm: Sequence[float] | np.ndarray | None = None
    fwhm_nm: Sequence[float] | np.ndarray | None = None
    names: Sequence[str] | None = None
    good: Sequence[bool] | np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.wavelengths_nm is None and self.names is None:
            raise OutputError("The output's bands need wavelengths or names.")
        wavelengths = None if self.wavelengths_nm is None else np.asarray(self.wavelengths_nm, np.float64).ravel()
        count = int(wavelengths.size) if wavelengths is not None else len(self.names)
        if count == 0:
            raise OutputError("The output needs at least one band (no wavelengths given).")
        fwhm = None if self.fwhm_nm is None else np.asarray(self.fwhm_nm, dtype=np.float64).ravel()
        if fwhm is not None and fwhm.size != count:
            raise OutputError(f"Got {fwhm.size} FWHM values for {count} bands.")
        names = None if self.names is None else list(self.names)
        if names is not None and len(names) != count:
            raise OutputError(f"Got {len(names)} band names for {count} bands.")
        good = None if self.good is None else np.asarray(self.good, dtype=bool).ravel()
        if good is not None and good.size != count:
            raise OutputError(f"Got {good.size} bad-band flags for {count} bands.")
        for name, value in (("wavelengths_nm", wavelengths), ("fwhm_nm", fwhm), ("names", names), ("good", good)):
            object.__setattr__(self, name, value)

    @property
    def count(self) -> int:
        return int(self.wavelengths_nm.size) if self.wavelengths_nm is not None else len(self.names)


class HSIWriter:
    """Stream a fused HR-HSI into a tiled, compressed GeoTIFF that appears only once complete.

    Use as a context manager::

        with HSIWriter(out, grid, OutputBands(wavelengths), Encoding(dtype="int16", scale=1e-4),
                       inputs=[hsi_path, msi_path]) as writer:
            writer.write_blocks((window, predict(window)) for window in writer.block_windows())

    ``write_block`` takes float blocks ``(count, rows, cols)`` with NaN for nodata. Blocks never written are
    nodata. Dataset tags: ``geolift_version``, ``wavelength_units``, ``geolift_parameters`` (JSON of
    ``parameters``) and the caller's ``tags``. The output path is checked at once (:func:`check_output_path`:
    never an input, not an existing file unless ``overwrite``).
    """

    def __init__(
        self,
        path: PathLike,
        grid: Grid,
        bands: OutputBands,
        encoding: Encoding | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        inputs: Sequence[PathLike] = (),
    ) -> None:
        self.grid = grid if isinstance(grid, Grid) else Grid.like(grid)
        self.bands = bands
        self.encoding = encoding if encoding is not None else Encoding()
        self.count = bands.count
        self.width, self.height = self.grid.width, self.grid.height
        self.tags = _tags(tags or {})
        self.parameters = dict(parameters) if parameters is not None else None
        self.overwrite = overwrite
        self.inputs = tuple(inputs)
        self.path = check_output_path(path, overwrite=overwrite, inputs=self.inputs)
        self.temp_path: Path | None = None
        self._ds = None
        self._pixels_written = 0
        self.cog_seconds = 0.0  # time GDAL's COG driver took to copy the finished file (with cog)

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> HSIWriter:
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
            os.chmod(tmp, NEW_FILE_MODE)  # mkstemp's files are private; an output should be readable as usual
        except OSError as exc:
            raise OutputError(f"Cannot create a file in {self.path.parent} ({exc.strerror}).") from exc
        self.temp_path = Path(tmp)
        if self.encoding.options or self.encoding.cog:
            try:  # GDAL may only notice a bad combination on its compression threads, and not say so: try it small
                self.encoding.probe(self.count)
            except OutputError:
                self.abort()
                raise
        try:
            self._ds = rasterio.open(self.temp_path, "w", **self.encoding.profile(self.grid, self.count))
            self._write_metadata()
        except RasterioError as exc:
            self.abort()
            raise OutputError(f"Cannot create {self.path} ({str(exc).strip().splitlines()[0]}).") from exc

    def _write_metadata(self) -> None:
        ds = self._ds
        spectral = self.bands.wavelengths_nm is not None
        for i in range(self.count if not spectral else 0):
            ds.set_band_description(i + 1, self.bands.names[i])
        for i in range(self.count if spectral else 0):
            wl = self.bands.wavelengths_nm[i]
            name = _DESC_SUFFIX.sub("", self.bands.names[i]) if self.bands.names else ""
            ds.set_band_description(i + 1, f"{name or f'band {i + 1}'} ({_fmt(wl)} nm)")
            band_tags = {"wavelength": _fmt(wl), "wavelength_units": "Nanometers"}
            imagery = {"CENTRAL_WAVELENGTH_UM": _fmt(wl / 1000.0)}
            if self.bands.fwhm_nm is not None:
                band_tags["fwhm"] = _fmt(self.bands.fwhm_nm[i])
                imagery["FWHM_UM"] = _fmt(self.bands.fwhm_nm[i] / 1000.0)
            if self.bands.good is not None:
                band_tags["bbl"] = "1" if self.bands.good[i] else "0"
            ds.update_tags(i + 1, **band_tags)
            ds.update_tags(i + 1, ns="IMAGERY", **imagery)
        if self.encoding.scaled:
            ds.scales = (self.encoding.scale,) * self.count
            ds.offsets = (self.encoding.offset,) * self.count
        dataset_tags = dict(self.tags)
        dataset_tags["geolift_version"] = __version__
        if spectral:
            dataset_tags["wavelength_units"] = "Nanometers"
        if self.parameters is not None:
            dataset_tags["geolift_parameters"] = json.dumps(self.parameters, sort_keys=True, default=str)
        ds.update_tags(**dataset_tags)

    def update_tags(self, **tags: Any) -> None:
        """Add dataset tags known only once the blocks are written (e.g. a run report)."""
        if self._ds is None:
            raise RuntimeError("HSIWriter is not open; use it as a context manager")
        self._ds.update_tags(**_tags(tags))

    def block_windows(self, blocks_per_side: int = 1) -> Iterator[Window]:
        """Tile-aligned windows (``blocks_per_side`` tiles square) covering the output, row by row."""
        return self.grid.block_windows(self.encoding.tile * max(1, int(blocks_per_side)))

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
        data = self.encoding.encode(block)
        try:
            self._ds.write(data, window=Window(col, row, w, h))
        except RasterioError as exc:
            raise OutputError(f"Writing {self.path} failed ({str(exc).strip().splitlines()[0]}).") from exc
        self._pixels_written += w * h

    def write_blocks(self, blocks: Iterable[tuple[Window | tuple, np.ndarray]]) -> float:
        """Write every ``(window, block)`` of ``blocks``; returns the seconds spent encoding and writing.

        ``blocks`` may be a generator that computes each block as it is asked for (time spent in it is not counted);
        it is closed when writing stops, on success or failure, so whatever it runs ahead stops too.
        """
        seconds = 0.0
        try:
            for window, block in blocks:
                started = time.perf_counter()
                self.write_block(block, window)
                seconds += time.perf_counter() - started
                del block
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
        return seconds


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
        if self.encoding.cog:
            self._convert_to_cog()
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

    def overview_factors(self) -> list[int]:
        """2, 4, 8, ... until the smallest overview fits in one tile (none for an output of one tile)."""
        factors, factor = [], 2
        while max(self.width, self.height) / (factor // 2) > self.encoding.tile:
            factors.append(factor)
            factor *= 2
        return factors

    def _build_overviews(self, resampling: str) -> None:
        """Internal overviews in the (closed, band-interleaved) temporary file; the COG driver then copies them."""
        from rasterio.enums import Resampling
        from rasterio.env import get_gdal_config

        factors = self.overview_factors()
        if not factors:
            return
        try:
            method = Resampling[resampling.lower()]
        except KeyError:  # a GDAL name rasterio lacks: the COG driver makes the overviews itself
            return
        threads = {} if get_gdal_config("GDAL_NUM_THREADS") else {"GDAL_NUM_THREADS": str(self.encoding.num_threads)}
        with rasterio.Env(**threads), rasterio.open(self.temp_path, "r+") as ds:
            ds.build_overviews(factors, method)

    def _convert_to_cog(self) -> None:
        """Copy the finished temporary GeoTIFF into a COG (another temporary file) with GDAL's COG driver; the
        COG becomes the temporary file that replaces the output."""
        import rasterio.shutil

        started = time.perf_counter()
        if not self.temp_path.is_file():
            name = self.temp_path.name
            self.abort()
            raise OutputError(f"Making {self.path} a Cloud-Optimized GeoTIFF failed (its temporary file {name} "
                              "disappeared); nothing was replaced.")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.geolift-tmp-cog-", dir=self.path.parent)
            os.close(fd)
        except OSError as exc:
            self.abort()
            raise OutputError(f"Cannot create a file in {self.path.parent} ({exc.strerror}).") from exc
        cog = Path(tmp)
        logger.info("Writing %s as a Cloud-Optimized GeoTIFF (overviews and COG layout, GDAL's COG driver).",
                    self.path.name)
        options = self.encoding.cog_options
        try:
            if not {"OVERVIEWS", "OVERVIEW_COUNT"} & set(dict(self.encoding.options)):
                self._build_overviews(options.get("OVERVIEW_RESAMPLING", "AVERAGE"))
            rasterio.shutil.copy(self.temp_path, cog, driver="COG", **options)
            os.chmod(cog, NEW_FILE_MODE)
        except (*GDAL_ERRORS, OSError) as exc:
            _remove_with_sidecars(cog)
            self.abort()
            raise OutputError(f"Making {self.path} a Cloud-Optimized GeoTIFF failed ({gdal_message(exc)}).") from None
        except BaseException:  # Ctrl-C while GDAL copies: no temporary file is left either
            _remove_with_sidecars(cog)
            self.abort()
            raise
        _remove_with_sidecars(self.temp_path)
        self.temp_path = cog
        self.cog_seconds = time.perf_counter() - started
        logger.info("COG layout written in %.1f s.", self.cog_seconds)

    def abort(self) -> None:
        """Drop the temporary file (and any sidecar); the output path is left as it was."""
        if self._ds is not None:
            try:
                self._ds.close()
            except RasterioError:
                pass
            self._ds = None
        if self.temp_path is not None:
            _remove_with_sidecars(self.temp_path)
            self.temp_path = None


def _remove_with_sidecars(path: Path) -> None:
    """Remove a temporary file and what GDAL may have put beside it (``.aux.xml``, the COG driver's ``.ovr.tmp``)."""
    for p in (path, Path(str(path) + ".aux.xml"), Path(str(path) + ".ovr.tmp"), Path(str(path) + ".msk.ovr.tmp")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def write_hsi(
    path: PathLike,
    cube: np.ndarray,
    *,
    crs: Any,
    transform: Affine,
    wavelengths_nm: Sequence[float] | np.ndarray,
    fwhm_nm: Sequence[float] | np.ndarray | None = None,
    band_names: Sequence[str] | None = None,
    good_bands: Sequence[bool] | np.ndarray | None = None,
    tags: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    inputs: Sequence[PathLike] = (),
    **encoding: Any,
) -> Path:
    """Write a whole ``(count, rows, cols)`` float cube in one call; ``encoding`` are :class:`Encoding`'s fields."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (bands, rows, cols), got shape {cube.shape}")
    grid = Grid(crs, transform, cube.shape[2], cube.shape[1])
    bands = OutputBands(wavelengths_nm, fwhm_nm, band_names, good_bands)
    with HSIWriter(path, grid, bands, Encoding(**encoding), tags=tags, parameters=parameters, overwrite=overwrite,
                   inputs=inputs) as writer:
        writer.write_blocks((w, cube[(slice(None), *w.toslices())]) for w in writer.block_windows(blocks_per_side=4))
    return writer.path
