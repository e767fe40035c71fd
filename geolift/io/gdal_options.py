"""GDAL creation options a user passes through (``--co NAME=VALUE``, as the rio tools take them), checked first.

GDAL itself only warns about an unknown creation option and ignores it, and refuses a bad value only once the file
is created, which for geolift is after the training. So each option is checked against the list the driver
publishes (GDAL's ``DMD_CREATIONOPTIONLIST`` metadata item: names, types, allowed values, minima), before any work:

* an unknown name, a value of the wrong type (``int``, ``float``, ``boolean``) or one not among a ``string-select``
  option's values (or their aliases, e.g. ``PREDICTOR=2`` for ``STANDARD``) raises ``OutputError``;
* options that would break how geolift writes are refused with the reason (:data:`REFUSED`): the tile layout
  (``TILED``, ``BLOCKXSIZE``, ``BLOCKYSIZE``, the COG driver's ``BLOCKSIZE``; ``--tile-size`` sets it, because
  geolift predicts and writes one tile at a time), ``NBITS`` (would silently cut stored values), and the COG
  driver's reprojection options (the output grid is the MSI's, on purpose).

The list is read from the GDAL library rasterio loaded: through ``osgeo.gdal`` when it is installed, else by
asking that same library through ``ctypes`` (rasterio has no public call for it). Where neither works, names are
checked against :data:`FALLBACK_NAMES` (a short documented list) and values are left to GDAL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geolift.errors import OutputError

__all__ = ["FALLBACK_NAMES", "GDAL_ERRORS", "REFUSED", "OptionSpec", "check_creation_options", "driver_options",
           "gdal_message", "parse_creation_options"]

_TILES = "geolift predicts and writes one square tile at a time; set the tile size with --tile-size instead"
_GRID = "the output stays on the MSI's grid; reproject the finished file with gdalwarp if you need another"

#: Options refused for each driver, with the reason given to the user.
REFUSED: dict[str, dict[str, str]] = {
    "GTiff": {
        "TILED": "geolift always writes a tiled GeoTIFF (streamed tile by tile)",
        "BLOCKXSIZE": _TILES, "BLOCKYSIZE": _TILES,
        "NBITS": "it would silently cut the stored values to fewer bits",
        "COPY_SRC_OVERVIEWS": "it only applies when copying a file; use --cog for a file with overviews",
        "STREAMABLE_OUTPUT": "geolift writes tiles as they are computed, which a streamable file does not allow",
        "ALPHA": "it would turn the last spectral band into transparency",
        "PHOTOMETRIC": "the bands are spectral bands, not colours",
    },
    "COG": {
        "BLOCKSIZE": _TILES,
        "NBITS": "it would silently cut the stored values to fewer bits",
        **{name: _GRID for name in ("TILING_SCHEME", "TARGET_SRS", "RES", "EXTENT", "ZOOM_LEVEL",
                                    "ZOOM_LEVEL_STRATEGY", "ALIGNED_LEVELS", "ADD_ALPHA", "WARP_RESAMPLING",
                                    "RESAMPLING")},
    },
}

#: Names accepted when GDAL's own list cannot be read (checked against GDAL 3.10's GTiff and COG lists).
FALLBACK_NAMES: dict[str, frozenset[str]] = {
    "GTiff": frozenset({"COMPRESS", "PREDICTOR", "DISCARD_LSB", "JPEG_QUALITY", "ZLEVEL", "ZSTD_LEVEL",
                        "LZMA_PRESET", "MAX_Z_ERROR", "WEBP_LEVEL", "NUM_THREADS", "INTERLEAVE", "BIGTIFF",
                        "PHOTOMETRIC", "SPARSE_OK", "PROFILE", "GEOTIFF_VERSION", "ALPHA", "PIXELTYPE",
                        "ENDIANNESS", "TFW", "RPB", "RPCTXT", "WORLDFILE", "STREAMABLE_OUTPUT"}),
    "COG": frozenset({"COMPRESS", "OVERVIEW_COMPRESS", "LEVEL", "PREDICTOR", "OVERVIEW_PREDICTOR", "QUALITY",
                      "OVERVIEW_QUALITY", "MAX_Z_ERROR", "MAX_Z_ERROR_OVERVIEW", "NUM_THREADS", "BIGTIFF",
                      "OVERVIEW_RESAMPLING", "OVERVIEWS", "OVERVIEW_COUNT", "GEOTIFF_VERSION", "SPARSE_OK",
                      "STATISTICS", "INTERLEAVE"}),
}

def _gdal_errors() -> tuple[type[BaseException], ...]:
    from rasterio.errors import RasterioError

    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # pragma: no cover - rasterio moved it
        return (RasterioError,)
    return (RasterioError, CPLE_BaseError)


#: What rasterio raises when GDAL fails (its own errors, and GDAL's CPLE errors it passes on as they are).
GDAL_ERRORS = _gdal_errors()


def gdal_message(exc: BaseException) -> str:
    """The first line of what GDAL said, from the innermost error of ``exc``'s chain ("Write failed. See previous
    exception" says nothing)."""
    messages = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip()
        if text:
            messages.append(text.splitlines()[0])
        exc = exc.__cause__ or exc.__context__
    useful = [m for m in messages if "see previous exception" not in m.lower()]
    return (useful or messages or ["unknown GDAL error"])[-1 if useful else 0]


#: Overview resampling methods GDAL knows (its option lists type OVERVIEW_RESAMPLING as a free string).
RESAMPLING_METHODS = ("NEAREST", "AVERAGE", "RMS", "BILINEAR", "CUBIC", "CUBICSPLINE", "LANCZOS", "MODE", "GAUSS",
                      "AVERAGE_MAGPHASE")
_RESAMPLING_OPTIONS = {"OVERVIEW_RESAMPLING"}

_BOOLEAN = {"YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class OptionSpec:
    """One creation option as the driver describes it."""

    name: str
    type: str = "string"  # int, float, boolean, string, string-select
    values: tuple[str, ...] = ()  # string-select: the allowed values
    aliases: Mapping[str, str] | None = None  # alias -> value (PREDICTOR 2 -> STANDARD)
    minimum: float | None = None
    maximum: float | None = None


def _parse_option_list(xml: str) -> dict[str, OptionSpec]:
    specs: dict[str, OptionSpec] = {}
    root = ET.fromstring(xml)
    for option in root.iter("Option"):
        name = option.get("name", "").upper()
        if not name:
            continue
        values, aliases = [], {}
        for value in option.iter("Value"):
            text = (value.text or "").strip().upper()
            values.append(text)
            if value.get("alias"):
                aliases[value.get("alias").upper()] = text

        def number(key: str, option=option) -> float | None:
            try:
                return float(option.get(key)) if option.get(key) is not None else None
            except ValueError:
                return None

        specs[name] = OptionSpec(name, option.get("type", "string").lower(), tuple(values), aliases,
                                 number("min"), number("max"))
    return specs


def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL library rasterio loaded (the very same one, so the list matches what will write)."""
    import rasterio  # loads (and registers) its GDAL

    candidates = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            candidates += [line.split()[-1] for line in maps if "libgdal" in line and "/" in line]
    except OSError:
        pass
    base = os.path.dirname(rasterio.__file__)
    candidates += glob.glob(os.path.join(base, "..", "rasterio.libs", "libgdal*"))
    candidates += glob.glob(os.path.join(base, ".dylibs", "libgdal*"))
    found = ctypes.util.find_library("gdal")
    if found:
        candidates.append(found)
    for path in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(path)
            lib.GDALGetDriverByName.restype = ctypes.c_void_p
            lib.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
            lib.GDALGetMetadataItem.restype = ctypes.c_char_p
            lib.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


@functools.lru_cache(maxsize=8)
def driver_options(driver: str) -> dict[str, OptionSpec] | None:
    """The creation options GDAL's ``driver`` (``"GTiff"``, ``"COG"``) accepts, or None when the list cannot be
    read (then :data:`FALLBACK_NAMES` applies)."""
    import rasterio

    xml = None
    try:
        from osgeo import gdal  # type: ignore[import-not-found]

        handle = gdal.GetDriverByName(driver)
        xml = handle.GetMetadataItem("DMD_CREATIONOPTIONLIST") if handle is not None else None
    except ImportError:
        lib = _gdal_library()
        if lib is not None:
            with rasterio.Env():  # registers the drivers
                handle = lib.GDALGetDriverByName(driver.encode())
                if handle:
                    raw = lib.GDALGetMetadataItem(handle, b"DMD_CREATIONOPTIONLIST", None)
                    xml = raw.decode("utf-8", "replace") if raw else None
    if not xml:
        return None
    try:
        return _parse_option_list(xml)
    except ET.ParseError:
        return None


def parse_creation_options(items: Iterable[str] | Mapping[str, object] | None) -> dict[str, str]:
    """``["COMPRESS=ZSTD", "ZSTD_LEVEL=9"]`` (or a mapping) as ``{"COMPRESS": "ZSTD", "ZSTD_LEVEL": "9"}``.

    Names are upper-cased; a later repeat of a name wins. A missing ``=`` or a malformed name raises
    ``OutputError``.
    """
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for item in items:
            if isinstance(item, (tuple, list)) and len(item) == 2:
                pairs.append((item[0], item[1]))
                continue
            name, sep, value = str(item).partition("=")
            if not sep:
                raise OutputError(f"Creation option {item!r} is not NAME=VALUE (e.g. --co COMPRESS=ZSTD).")
            pairs.append((name, value))
    out: dict[str, str] = {}
    for name, value in pairs:
        name, value = str(name).strip(), str(value).strip()
        if not _NAME.match(name):
            raise OutputError(f"Creation option name {name!r} is not a GDAL option name (e.g. --co COMPRESS=ZSTD).")
        if not value:
            raise OutputError(f"Creation option {name.upper()} has no value (give NAME=VALUE).")
        out[name.upper()] = value
    return out


def _check_value(spec: OptionSpec, value: str, driver: str) -> str:
    where = f"{spec.name} (GDAL {driver} creation option)"
    if spec.type == "int":
        try:
            number = int(value)
        except ValueError:
            raise OutputError(f"{where} must be an integer, got {value!r}.") from None
        if spec.minimum is not None and number < spec.minimum:
            raise OutputError(f"{where} must be at least {spec.minimum:g}, got {value}.")
        if spec.maximum is not None and number > spec.maximum:
            raise OutputError(f"{where} must be at most {spec.maximum:g}, got {value}.")
        return str(number)
    if spec.type == "float":
        try:
            float(value)
        except ValueError:
            raise OutputError(f"{where} must be a number, got {value!r}.") from None
        return value
    if spec.type == "boolean":
        if value.upper() not in _BOOLEAN:
            raise OutputError(f"{where} must be YES or NO, got {value!r}.")
        return value.upper()
    if spec.name in _RESAMPLING_OPTIONS:
        if value.upper() not in RESAMPLING_METHODS:
            raise OutputError(f"{where} cannot be {value!r}; use one of {', '.join(RESAMPLING_METHODS)}.")
        return value.upper()
    if spec.type == "string-select" and spec.values:
        upper = value.upper()
        if upper in spec.values:
            return upper
        if spec.aliases and upper in spec.aliases:
            return spec.aliases[upper]
        allowed = ", ".join(spec.values)
        raise OutputError(f"{where} cannot be {value!r}; GDAL here accepts {allowed}.")
    return value


def check_creation_options(options: Mapping[str, str], driver: str = "GTiff") -> dict[str, str]:
    """``options`` (parsed, upper-case names) checked for ``driver`` as the module says; returns them with values
    normalised (``PREDICTOR=2`` -> ``STANDARD``, ``compress=zstd`` -> ``ZSTD``). ``OutputError`` on any problem."""
    refused = REFUSED.get(driver, {})
    specs = driver_options(driver)
    checked: dict[str, str] = {}
    for name, value in options.items():
        if name in refused:
            raise OutputError(f"Creation option {name} is not accepted: {refused[name]}.")
        if specs is None:
            if name not in FALLBACK_NAMES.get(driver, frozenset()):
                raise OutputError(f"{name} is not a creation option geolift knows for GDAL's {driver} driver.")
            checked[name] = value
            continue
        if name not in specs:
            close = [n for n in specs if n not in refused and (name in n or n in name)]
            hint = f" (did you mean {', '.join(sorted(close)[:3])}?)" if close else ""
            raise OutputError(f"{name} is not a creation option of GDAL's {driver} driver{hint}.")
        checked[name] = _check_value(specs[name], value, driver)
    return checked
