"""Encoding: how fused values become bytes in a GeoTIFF (data type, scaling, nodata, tiles, compression).

One description, checked once, that every writer takes (the idea of rio-cogeo's ``profiles``): ``geolift fuse``,
``geolift batch`` and the Python API choose an :class:`Encoding`, :class:`geolift.io.HSIWriter` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from geolift.errors import OutputError

__all__ = ["COMPRESSIONS", "Encoding"]

#: Compression names geolift accepts, and GDAL's name for each (None: uncompressed).
COMPRESSIONS = {"deflate": "DEFLATE", "zstd": "ZSTD", "lzw": "LZW", "none": None}
_BIGTIFF = {"IF_SAFER", "IF_NEEDED", "YES", "NO"}
_INT16_MIN, _INT16_MAX = -32768, 32767
#: Bands encoded at a time (bounds the float32 temporaries of :meth:`Encoding.encode`).
_ENCODE_BANDS = 16


@dataclass(frozen=True)
class Encoding:
    """How values are stored: ``float32`` as they are, or ``int16`` as ``round((value - offset) / scale)``.

    float32 writes NaN as nodata by default; int16 declares ``scale``/``offset`` as GDAL band scale/offset so
    readers unscale (``scale=1e-4`` stores reflectance 0..1 as 0..10000) and writes NaN as nodata (default
    -32768; a valid value that would round onto nodata is nudged by one). Tiles are ``tile`` pixels square
    (a multiple of 16), compressed with ``compress`` (predictor 2 for int16, 3 for float32) on ``num_threads``
    GDAL threads; ``bigtiff`` is GDAL's BIGTIFF option. Every mistake raises ``OutputError`` on construction.
    """

    dtype: str = "float32"
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    tile: int = 512
    compress: str = "deflate"
    num_threads: int | str = 2
    bigtiff: str = "IF_SAFER"

    def __post_init__(self) -> None:
        dtype = str(self.dtype).lower()
        if dtype not in ("float32", "int16"):
            raise OutputError(f"Output type {self.dtype!r} is not supported; use 'float32' or 'int16'.")
        if dtype == "float32" and (self.scale not in (None, 1, 1.0) or self.offset not in (None, 0, 0.0)):
            raise OutputError("A scale or offset only applies to int16 output; float32 stores values as they are.")
        scale = 1.0 if self.scale is None else float(self.scale)
        offset = 0.0 if self.offset is None else float(self.offset)
        if not math.isfinite(scale) or scale == 0:
            raise OutputError(f"The int16 scale must be a non-zero number, got {self.scale!r}.")
        nodata = float(self.nodata if self.nodata is not None else (math.nan if dtype == "float32" else _INT16_MIN))
        if dtype == "int16" and not (math.isfinite(nodata) and nodata == int(nodata)
                                     and _INT16_MIN <= nodata <= _INT16_MAX):
            raise OutputError(f"The int16 nodata value must be an integer in the int16 range, got {self.nodata!r}.")
        tile = int(self.tile)
        if tile % 16 or not 16 <= tile <= 4096:
            raise OutputError(f"Tile size {self.tile} is not a multiple of 16 between 16 and 4096 (use 256 or 512).")
        compress = str(self.compress).lower()
        if compress not in COMPRESSIONS:
            raise OutputError(f"Compression {self.compress!r} is not supported; use one of {sorted(COMPRESSIONS)}.")
        bigtiff = str(self.bigtiff).upper()
        if bigtiff not in _BIGTIFF:
            raise OutputError(f"BIGTIFF option {self.bigtiff!r} is not one of {sorted(_BIGTIFF)}.")
        threads = str(self.num_threads).upper()
        if not (threads == "ALL_CPUS" or (threads.isdigit() and int(threads) > 0)):
            raise OutputError(f"num_threads must be a positive integer or 'ALL_CPUS', got {self.num_threads!r}.")
        for name, value in (("dtype", dtype), ("scale", scale), ("offset", offset), ("nodata", nodata),
                            ("tile", tile), ("compress", compress), ("bigtiff", bigtiff), ("num_threads", threads)):
            object.__setattr__(self, name, value)

    @property
    def scaled(self) -> bool:
        """Whether readers must unscale (int16 with a scale or offset that is not the identity)."""
        return self.dtype == "int16" and (self.scale != 1.0 or self.offset != 0.0)

    @property
    def creation_options(self) -> dict[str, str]:
        """GDAL GTiff creation options: band-interleaved tiles (one tile stays a few MB however many bands)."""
        options = {
            "TILED": "YES",
            "BLOCKXSIZE": str(self.tile),
            "BLOCKYSIZE": str(self.tile),
            "INTERLEAVE": "BAND",
            "BIGTIFF": str(self.bigtiff),
            "NUM_THREADS": str(self.num_threads),
        }
        if COMPRESSIONS[str(self.compress)]:
            options["COMPRESS"] = str(COMPRESSIONS[str(self.compress)])
            options["PREDICTOR"] = "3" if self.dtype == "float32" else "2"
        return options

    def profile(self, grid: Any, count: int) -> dict[str, Any]:
        """Keyword arguments for ``rasterio.open(path, "w", ...)`` on ``grid`` with ``count`` bands."""
        options = {k.lower(): v for k, v in self.creation_options.items()}
        return {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": int(count),
                "dtype": self.dtype, "crs": grid.crs, "transform": grid.transform, "nodata": self.nodata, **options}

    def encode(self, block: np.ndarray) -> np.ndarray:
        """Float values (NaN = nodata) as stored values of this encoding."""
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
