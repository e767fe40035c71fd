"""Pixel sources for product cubes that GDAL shows in another layout than ``(bands, rows, cols)``.

PRISMA stores its cubes band-interleaved by line, ``(rows, bands, cols)``; GDAL's HDF5 driver then shows each image
row as one "band" holding a ``bands x cols`` image. :class:`LineInterleavedCube` reads such a dataset back as
``(bands, rows, cols)`` window by window, so the rest of geolift sees an ordinary scene (see
:class:`geolift.io.read.PixelSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geolift.io.read import _open_raster

__all__ = ["LineInterleavedCube", "gdal_layout"]


@dataclass(frozen=True)
class LineInterleavedCube:
    """A ``(rows, bands, cols)`` dataset that GDAL shows as ``rows`` bands of ``bands x cols`` images."""

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


def gdal_layout(shape: tuple[int, int, int], count: int) -> str:
    """How GDAL shows a cube of ``count`` spectral bands: "bsq" (as bands) or "bil" (image rows as bands).

    ``shape`` is GDAL's ``(count, height, width)`` of the dataset. Which one GDAL picks depends on its version and
    on the HDF-EOS metadata it finds, so readers ask instead of assuming; anything else is an error.
    """
    if shape[0] == count and shape[1] != count:
        return "bsq"
    if shape[1] == count and shape[0] != count:
        return "bil"
    raise ValueError(f"GDAL shows the cube as {shape[0]} x {shape[1]} x {shape[2]}; which axis holds the {count} "
                     "bands is not clear")
