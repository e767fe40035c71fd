"""Pixel sources for product cubes that GDAL does not show as ``(bands, rows, cols)`` on the map grid.

PRISMA stores its cubes band-interleaved by line, ``(rows, bands, cols)``, and GDAL may then show each image row as
one "band" holding a ``bands x cols`` image: :class:`InterleavedCube` reads such a dataset back as
``(bands, rows, cols)`` window by window. EMIT stores its cube by pixel, ``(rows, cols, bands)``, in swath geometry:
:class:`HDF5Cube` reads it and :class:`LookupTableGrid` places its pixels on the map grid through the product's
geometry lookup table. The rest of geolift then sees an ordinary scene (see :class:`geolift.io.read.PixelSource`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geolift.io.read import _open_raster

__all__ = ["HDF5Cube", "InterleavedCube", "LookupTableGrid", "gdal_layout"]


@dataclass(frozen=True)
class InterleavedCube:
    """A ``(rows, bands, cols)`` dataset that GDAL shows with its image rows as bands, each a ``bands x cols``
    image (PRISMA's HDF5 cubes, see :func:`gdal_layout`)."""

    path: str  # the GDAL path of the dataset (an HDF5 subdataset)
    count: int  # spectral bands

    def read(self, bands: Sequence[int] | None, window: Window) -> np.ndarray:
        """1-based spectral ``bands`` (None: all) of ``window`` as ``(bands, rows, cols)``."""
        idx = np.arange(1, self.count + 1) if bands is None else np.asarray(bands, dtype=int)
        first, last = int(idx.min()), int(idx.max())
        rows = list(range(int(window.row_off) + 1, int(window.row_off + window.height) + 1))
        with _open_raster(self.path) as ds:
            data = ds.read(rows, window=Window(window.col_off, first - 1, window.width, last - first + 1))
        return np.ascontiguousarray(data[:, idx - first, :].transpose(1, 0, 2))


@dataclass(frozen=True)
class HDF5Cube:
    """A ``(rows, cols, bands)`` HDF5/netCDF-4 dataset read with h5py, one hyperslab per window.

    GDAL's netCDF driver shows such a variable band by band, and each band read goes through every chunk of the
    window again: on a chunked EMIT-like cube (64 x 64 x 285 chunks) a full read took 14 times as long as the same
    pixels in a GeoTIFF (``benchmarks/product_reading.py``). h5py reads each chunk once. Inside a ZIP, the member is
    opened as a file object (no copy on disk).
    """

    path: str  # the file, or the member's name inside ``archive``
    dataset: str  # e.g. "reflectance"
    count: int
    archive: str | None = None

    def read(self, bands: Sequence[int] | None, window: Window) -> np.ndarray:
        import h5py

        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        idx = np.arange(self.count) if bands is None else np.asarray(bands, dtype=int) - 1
        first, last = int(idx.min()), int(idx.max()) + 1
        try:
            if self.archive is not None:
                with zipfile.ZipFile(self.archive) as archive, archive.open(self.path) as member, \
                        h5py.File(member, "r") as f:
                    data = f[self.dataset][rows, cols, first:last]
            else:
                with h5py.File(self.path, "r") as f:
                    data = f[self.dataset][rows, cols, first:last]
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise RasterioError(f"{self.path}: {exc}") from exc  # the scene turns it into an InputError
        return np.ascontiguousarray(data[:, :, idx - first].transpose(2, 0, 1))


@dataclass(frozen=True)
class LookupTableGrid:
    """A swath cube placed on a map grid by a geometry lookup table (EMIT's GLT).

    ``glt_x``/``glt_y`` hold, for each map pixel, the 1-based swath column and row it takes (0: none, the map pixel
    gets ``fill``). This is nearest-neighbour orthorectification exactly as the product defines it: no value is
    interpolated. A window reads only the swath rows and columns its map pixels point to.
    """

    swath: HDF5Cube
    glt_x: str  # GDAL paths of the two lookup tables (on the map grid), opened with ``config``
    glt_y: str
    fill: float
    config: tuple[tuple[str, str], ...] = ()

    def read(self, bands: Sequence[int] | None, window: Window) -> np.ndarray:
        with _opened(self.glt_x, self.config) as ds:
            cols = ds.read(1, window=window).astype(np.int64)
        with _opened(self.glt_y, self.config) as ds:
            rows = ds.read(1, window=window).astype(np.int64)
        n = self.swath.count if bands is None else len(bands)
        placed = (cols > 0) & (rows > 0)
        if not placed.any():
            return np.full((n, *cols.shape), self.fill, dtype=np.float32)
        top, left = int(rows[placed].min()) - 1, int(cols[placed].min()) - 1
        block = Window(left, top, int(cols[placed].max()) - left, int(rows[placed].max()) - top)
        data = self.swath.read(bands, block)
        out = np.full((n, *cols.shape), self.fill, dtype=data.dtype)
        out[:, placed] = data[:, rows[placed] - 1 - top, cols[placed] - 1 - left]
        return out


@contextmanager
def _opened(path: str, config: tuple[tuple[str, str], ...]) -> Iterator:
    with rasterio.Env(**dict(config)), _open_raster(path) as ds:
        yield ds


def gdal_layout(shape: tuple[int, int, int], count: int) -> str:
    """How GDAL shows a cube of ``count`` spectral bands: "bsq" (as bands), "bil" or "bip" (image rows as bands).

    ``shape`` is GDAL's ``(count, height, width)`` of the dataset. Which one GDAL picks depends on its version and
    on the HDF-EOS metadata it finds, so readers ask instead of assuming; anything else is an error.
    """
    if shape[0] == count and shape[1] != count:
        return "bsq"
    if shape[1] == count and shape[0] != count:
        return "bil"
    if shape[2] == count and shape[0] != count:
        return "bip"
    raise ValueError(f"GDAL shows the cube as {shape[0]} x {shape[1]} x {shape[2]}; which axis holds the {count} "
                     "bands is not clear")
