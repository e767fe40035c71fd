"""Raster grids: where pixels are (CRS, affine transform, size) and how a grid is cut into blocks.

The one description of georeferencing that reading, co-registration and writing share: :mod:`geolift.align` works
on grids, :class:`geolift.io.HSIWriter` writes onto one. No file is opened here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from geolift.errors import AlignmentError, MetadataError

__all__ = ["Grid", "block_windows", "shift_transform"]


@dataclass(frozen=True)
class Grid:
    """The georeferencing of a raster: CRS, affine transform (pixel corner based, rasterio style) and size.

    ``crs`` accepts anything :meth:`rasterio.crs.CRS.from_user_input` does (``"EPSG:32633"``, a WKT, a CRS).
    Rotated or sheared transforms are refused (no sensor product geolift targets uses them).
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    def __post_init__(self):
        if self.crs is None:
            raise MetadataError(
                "The raster has no coordinate reference system (CRS); geolift needs one to align scenes."
            )
        try:
            crs = CRS.from_user_input(self.crs)
        except CRSError as exc:
            raise MetadataError(f"The coordinate reference system {self.crs!r} is not understood: {exc}.") from None
        transform = Affine(*tuple(self.transform)[:6])
        if transform.b != 0 or transform.d != 0:
            raise AlignmentError(
                "Rotated or sheared geotransforms are not supported; warp the raster to a north-up grid first."
            )
        if transform.a == 0 or transform.e == 0:
            raise MetadataError("The raster's geotransform has a zero pixel size.")
        if int(self.width) < 1 or int(self.height) < 1:
            raise MetadataError(f"A raster grid must have at least one pixel, got {self.width} x {self.height}.")
        object.__setattr__(self, "crs", crs)
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def like(cls, obj) -> Grid:
        """The grid of anything with ``crs``, ``transform``, ``width`` and ``height`` (e.g. a rasterio dataset)."""
        return cls(obj.crs, obj.transform, obj.width, obj.height)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, the shape of one band."""
        return (self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units, whatever the axis directions of the transform."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width, self.height)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def subgrid(self, window: Window | tuple) -> Grid:
        """The grid of a pixel window ``(col_off, row_off, width, height)`` of this grid, e.g. one output block."""
        col_off, row_off, width, height = window.flatten() if isinstance(window, Window) else window
        return Grid(
            self.crs,
            self.transform @ Affine.translation(col_off, row_off),
            int(round(width)),
            int(round(height)),
        )

    def block_windows(self, size: int = 512) -> Iterator[Window]:
        """Windows of at most ``size`` x ``size`` pixels tiling this grid, row by row."""
        return block_windows(self.width, self.height, size)

    def shifted(self, dy: float, dx: float) -> Grid:
        """This grid moved by ``(dy, dx)`` of its own pixels; see :func:`shift_transform`."""
        return Grid(self.crs, shift_transform(self.transform, dy, dx), self.width, self.height)


def shift_transform(transform: Affine, dy: float, dx: float) -> Affine:
    """The geotransform moved by ``dy`` rows and ``dx`` columns of its own pixels.

    Pixel ``(r, c)`` of the result sits where pixel ``(r + dy, c + dx)`` sat before. With the ``(dy, dx)`` of
    :func:`geolift.align.estimate_shift` this puts the HSI where its content truly is (the sign convention is
    in :mod:`geolift.align`).
    """
    return Affine(*tuple(transform)[:6]) @ Affine.translation(dx, dy)


def block_windows(width: int, height: int, size: int = 512) -> Iterator[Window]:
    """Row-major windows of at most ``size`` x ``size`` that exactly tile a ``height`` x ``width`` grid."""
    if size <= 0:
        raise ValueError("block size must be positive")
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))
