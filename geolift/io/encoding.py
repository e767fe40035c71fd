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
from geolift.io.gdal_options import (
    GDAL_ERRORS,
    check_creation_options,
    driver_options,
    gdal_message,
    parse_creation_options,
)

__all__ = ["COMPRESSIONS", "Encoding", "user_sets_gdal_threads"]

#: Compression names geolift accepts, and GDAL's name for each (None: uncompressed).
COMPRESSIONS = {"deflate": "DEFLATE", "zstd": "ZSTD", "lzw": "LZW", "none": None}
_BIGTIFF = {"IF_SAFER", "IF_NEEDED", "YES", "NO"}
_INT16_MIN, _INT16_MAX = -32768, 32767
#: Bands encoded at a time (bounds the float32 temporaries of :meth:`Encoding.encode`).
_ENCODE_BANDS = 16
#: Compressions a predictor applies to (GDAL: horizontal differencing before LZW, DEFLATE, ZSTD, LZMA).
_PREDICTOR_COMPRESSIONS = {"LZW", "DEFLATE", "ZSTD", "LZMA"}
#: The smallest tile GDAL's COG driver accepts (its BLOCKSIZE option's minimum).
_COG_MIN_TILE = 128


def user_sets_gdal_threads() -> bool:
    """Whether ``GDAL_NUM_THREADS`` is set (in the environment, or as a GDAL config option, e.g. ``rasterio.Env``).

    geolift then leaves the ``NUM_THREADS`` creation option out, so GDAL uses the user's setting.
    """
    from rasterio.env import get_gdal_config

    return get_gdal_config("GDAL_NUM_THREADS") not in (None, "")


@dataclass(frozen=True)
class Encoding:
    """How values are stored: ``float32`` as they are, or ``int16`` as ``round((value - offset) / scale)``.

    float32 writes NaN as nodata by default; int16 declares ``scale``/``offset`` as GDAL band scale/offset so
    readers unscale (``scale=1e-4`` stores reflectance 0..1 as 0..10000) and writes NaN as nodata (default
    -32768; a valid value that would round onto nodata is nudged by one). Tiles are ``tile`` pixels square
    (a multiple of 16), compressed with ``compress`` (predictor 2 for int16, 3 for float32) on ``num_threads``
    GDAL threads; ``bigtiff`` is GDAL's BIGTIFF option. Every mistake raises ``OutputError`` on construction.

    ``options`` are GDAL creation options the user chose (``--co NAME=VALUE``; a mapping or ``"NAME=VALUE"``
    strings), checked by :func:`geolift.io.gdal_options.check_creation_options` for the driver that writes the
    final file and applied over geolift's own (they win). ``cog`` makes the final file a Cloud-Optimized GeoTIFF:
    the tiles are streamed into a plain tiled GeoTIFF as usual, then GDAL's COG driver copies it with overviews
    (:attr:`cog_options`). When ``GDAL_NUM_THREADS`` is set (environment or GDAL config) and ``options`` do not
    give ``NUM_THREADS``, geolift does not pass ``num_threads``, so GDAL uses the user's setting.
    """

    dtype: str = "float32"
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    tile: int = 512
    compress: str = "deflate"
    num_threads: int | str = 2
    bigtiff: str = "IF_SAFER"
    options: tuple[tuple[str, str], ...] = ()
    cog: bool = False

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
        cog = bool(self.cog)
        if cog and tile < _COG_MIN_TILE:
            raise OutputError(f"A Cloud-Optimized GeoTIFF needs tiles of at least {_COG_MIN_TILE} px (GDAL's COG "
                              f"driver); use a tile size of {_COG_MIN_TILE} or more with --cog, not {tile}.")
        options = check_creation_options(parse_creation_options(self.options), "COG" if cog else "GTiff")
        for name, value in (("dtype", dtype), ("scale", scale), ("offset", offset), ("nodata", nodata),
                            ("tile", tile), ("compress", compress), ("bigtiff", bigtiff), ("num_threads", threads),
                            ("options", tuple(options.items())), ("cog", cog)):
            object.__setattr__(self, name, value)

    @property
    def scaled(self) -> bool:
        """Whether readers must unscale (int16 with a scale or offset that is not the identity)."""
        return self.dtype == "int16" and (self.scale != 1.0 or self.offset != 0.0)

    def _threads(self, user: dict[str, str]) -> dict[str, str]:
        return {} if "NUM_THREADS" in user or user_sets_gdal_threads() else {"NUM_THREADS": str(self.num_threads)}

    def _compression(self, user: dict[str, str], predictor: str) -> dict[str, str]:
        """COMPRESS and PREDICTOR: the user's when given; geolift's predictor only where it applies."""
        compress = user.get("COMPRESS", COMPRESSIONS[str(self.compress)] or "NONE")
        options = {"COMPRESS": compress}
        if compress in _PREDICTOR_COMPRESSIONS:
            options["PREDICTOR"] = predictor
        return options

    @property
    def creation_options(self) -> dict[str, str]:
        """GDAL GTiff creation options: band-interleaved tiles (one tile stays a few MB however many bands), then
        the user's ``options`` over them (with ``cog``, the temporary file the COG is copied from: geolift's own)."""
        user = {} if self.cog else dict(self.options)
        options = {"TILED": "YES", "BLOCKXSIZE": str(self.tile), "BLOCKYSIZE": str(self.tile), "INTERLEAVE": "BAND",
                   "BIGTIFF": str(self.bigtiff), **self._threads(user),
                   **self._compression(user, "3" if self.dtype == "float32" else "2")}
        if options["COMPRESS"] == "NONE" and "COMPRESS" not in user:
            del options["COMPRESS"]
        return options | user

    @property
    def cog_options(self) -> dict[str, str]:
        """GDAL COG driver options for the final file: the same tiles and compression (band-interleaved where
        this GDAL's COG driver has ``INTERLEAVE``, from 3.11), overviews averaged, then the user's ``options``."""
        user = dict(self.options) if self.cog else {}
        options = {"BLOCKSIZE": str(self.tile), "BIGTIFF": str(self.bigtiff), "OVERVIEW_RESAMPLING": "AVERAGE",
                   **self._threads(user), **self._compression(user, "YES")}
        if "INTERLEAVE" in (driver_options("COG") or {}):
            options["INTERLEAVE"] = "BAND"
        return options | user

    def profile(self, grid: Any, count: int) -> dict[str, Any]:
        """Keyword arguments for ``rasterio.open(path, "w", ...)`` on ``grid`` with ``count`` bands."""
        options = {k.lower(): v for k, v in self.creation_options.items()}
        return {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": int(count),
                "dtype": self.dtype, "crs": grid.crs, "transform": grid.transform, "nodata": self.nodata, **options}

    def probe(self, count: int) -> None:
        """Let GDAL create a tiny file (in memory) with this encoding and ``count`` bands, as the output will be
        created, so that options GDAL refuses together (e.g. ``COMPRESS=JPEG`` for int16) fail before any work."""
        import uuid

        import rasterio
        import rasterio.shutil
        from affine import Affine

        name = f"/vsimem/geolift-probe-{uuid.uuid4().hex}.tif"
        grid = type("ProbeGrid", (), {"width": 16, "height": 16, "crs": "EPSG:4326",
                                      "transform": Affine(1e-4, 0, 0, 0, -1e-4, 0)})()
        single = {"num_threads": "1"}  # errors then stay on this thread, where rasterio raises them (no stderr)
        try:
            with rasterio.open(name, "w", **(self.profile(grid, count) | single)) as ds:
                ds.write(np.zeros((int(count), 16, 16), dtype=self.dtype))
            if self.cog:
                rasterio.shutil.copy(name, name + ".cog.tif", driver="COG", **(self.cog_options | {"NUM_THREADS": "1"}))
        except GDAL_ERRORS as exc:
            message = gdal_message(exc).rstrip(".")
            options = dict(self.options)
            given = f" with {', '.join(f'{k}={v}' for k, v in options.items())}" if options else ""
            raise OutputError(f"GDAL cannot write this output{given} ({message}).") from None
        finally:
            for path in (name, name + ".cog.tif"):
                try:
                    rasterio.shutil.delete(path)
                except (*GDAL_ERRORS, OSError):
                    pass

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
