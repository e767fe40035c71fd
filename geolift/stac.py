"""STAC metadata for geolift outputs: one Item per fused GeoTIFF, and a Collection for a batch.

Everything is read back from the finished GeoTIFF, so an Item says what the file holds and can be made for any
geolift output, however old (``geolift fuse --stac``, ``geolift batch --stac``, or :func:`write_item` from Python):
the grid and CRS, each band's data type, nodata, scale and offset (``raster:bands``), its centre wavelength and FWHM
in micrometres (``eo:bands``), and the run report geolift embeds in the file (``geolift_report``: the inputs, their
acquisition times, the options).

The Items follow STAC 1.0.0 with the ``eo`` (v1.1.0), ``raster`` (v1.1.0) and ``projection`` (v1.1.0) extensions,
written as plain JSON (no STAC library is needed at run time; the tests validate them against the official
schemas). Fields, from the specifications (https://github.com/radiantearth/stac-spec/tree/v1.0.0 and
https://github.com/stac-extensions):

* ``geometry``/``bbox``: the output's footprint in WGS84 longitude/latitude, its edges densified (21 points each)
  before they are transformed, so a footprint in a projected CRS keeps its curved shape.
* ``datetime``: the HSI's acquisition time when its product says it; with the MSI's too, ``start_datetime`` and
  ``end_datetime`` span both. Only the MSI's known: ``datetime`` null and a range of that one instant. A time the
  caller gives (``--stac-datetime``) wins. When nothing says when the scenes were taken, geolift does not invent a
  date: ``datetime`` is null, ``start_datetime`` is ``0001-01-01T00:00:00Z`` (the earliest RFC 3339 time, i.e. no
  lower bound) and ``end_datetime`` is when the Item was made (the scenes are older than that), and
  ``geolift:datetime_source`` is ``"unknown"`` with a note saying so. (STAC requires one of the two forms.)
* ``links``: ``derived_from`` to each input (relative paths for local files, URLs for remote ones).
* ``assets``: ``data`` (the GeoTIFF, relative href; ``profile=cloud-optimized`` in its media type when GDAL reports
  the COG layout) and, with ``qa``, the reliability layer.
* ``geolift:*`` properties: the version, preset, seed, steps, the full options, the SRF used and the MSI bands,
  the pair check's verdict, and the products' identities when known.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform as warp_points

from geolift import __version__
from geolift.errors import InputError, OutputError
from geolift.io.gdal_options import GDAL_ERRORS, gdal_message
from geolift.io.paths import is_remote

__all__ = [
    "EXTENSIONS", "STAC_VERSION", "batch_collection", "collection_for_items", "item_datetime", "item_for_output",
    "item_path_for", "parse_datetime_option", "write_item", "write_json_atomic",
]

log = logging.getLogger("geolift")

STAC_VERSION = "1.0.0"
EXTENSIONS = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "projection": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
}
#: ``start_datetime`` of an Item whose acquisition time nobody knows: the earliest RFC 3339 instant, no bound.
UNKNOWN_START = "0001-01-01T00:00:00Z"
_EDGE_POINTS = 21
_BAND_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_RASTER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
                 "float64", "cint16", "cint32", "cfloat32", "cfloat64"}


# --------------------------------------------------------------------------------------------------- times


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    text = _utc(moment).astimezone(dt.timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _parse_time(text: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time as an aware UTC datetime (naive = UTC; a date = its midnight), or None."""
    text = str(text or "").strip()
    if not text:
        return None
    text = text.replace("Z", "+00:00").replace("z", "+00:00")
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
        except ValueError:
            return None
    return _utc(moment).astimezone(dt.timezone.utc)


def parse_datetime_option(text: str) -> tuple[dt.datetime, dt.datetime | None]:
    """``--stac-datetime``: ``2009-08-20``, ``2009-08-20T10:31:00Z`` or a range ``START/END``; ``InputError`` when it
    is none of these (or the range runs backwards)."""
    parts = str(text).split("/")
    moments = [_parse_time(p) for p in parts]
    if len(parts) > 2 or any(m is None for m in moments):
        raise InputError(f"--stac-datetime {text!r} is not an ISO 8601 date or time (e.g. 2009-08-20 or "
                         "2009-08-20T10:31:00Z) or a range START/END.")
    if len(moments) == 2 and moments[1] < moments[0]:
        raise InputError(f"--stac-datetime {text!r} ends before it starts.")
    return moments[0], (moments[1] if len(moments) == 2 else None)


def item_datetime(report: Mapping[str, Any], given: str | None = None,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """The Item's time properties (see the module): ``datetime`` and, where they apply, ``start_datetime``,
    ``end_datetime``, ``geolift:datetime_source`` and ``geolift:datetime_note``."""
    if given:
        start, end = parse_datetime_option(given)
        if end is None:
            return {"datetime": _iso(start), "geolift:datetime_source": "user"}
        return {"datetime": None, "start_datetime": _iso(start), "end_datetime": _iso(end),
                "geolift:datetime_source": "user"}
    hsi = _parse_time((report.get("hsi_product") or {}).get("acquisition_time", ""))
    msi = _parse_time((report.get("msi_product") or {}).get("acquisition_time", ""))
    if hsi is not None:
        props: dict[str, Any] = {"datetime": _iso(hsi), "geolift:datetime_source": "hsi"}
        if msi is not None:
            props |= {"start_datetime": _iso(min(hsi, msi)), "end_datetime": _iso(max(hsi, msi)),
                      "geolift:datetime_source": "hsi+msi"}
        return props
    if msi is not None:
        return {"datetime": None, "start_datetime": _iso(msi), "end_datetime": _iso(msi),
                "geolift:datetime_source": "msi",
                "geolift:datetime_note": "the HSI's acquisition time is unknown; the range is the MSI's"}
    now = now or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return {"datetime": None, "start_datetime": UNKNOWN_START, "end_datetime": _iso(now),
            "geolift:datetime_source": "unknown",
            "geolift:datetime_note": "neither input says when it was acquired; the range only says it was before "
                                     "this Item was made (give the time with --stac-datetime)"}


# --------------------------------------------------------------------------------------------------- space


def _footprint(crs, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """The bounds' outline (edges densified) in WGS84 as a GeoJSON Polygon (counter-clockwise), and its bbox."""
    left, bottom, right, top = bounds
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)[:-1]
    xs = np.concatenate([left + (right - left) * steps, np.full(steps.size, right),
                         right - (right - left) * steps, np.full(steps.size, left)])
    ys = np.concatenate([np.full(steps.size, bottom), bottom + (top - bottom) * steps,
                         np.full(steps.size, top), top - (top - bottom) * steps])
    lon, lat = warp_points(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    if not all(map(math.isfinite, [*lon, *lat])):
        raise OutputError("The output's footprint cannot be expressed in longitude/latitude for its STAC Item.")
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lon, lat)]
    ring.append(ring[0])
    bbox = [round(min(lon), 7), round(min(lat), 7), round(max(lon), 7), round(max(lat), 7)]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _projection(ds) -> dict[str, Any]:
    crs = ds.crs
    props: dict[str, Any] = {"proj:epsg": crs.to_epsg()}
    if props["proj:epsg"] is None:
        props["proj:wkt2"] = crs.to_wkt(version="WKT2_2019")
    t = ds.transform
    props |= {"proj:shape": [ds.height, ds.width], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
              "proj:bbox": list(ds.bounds)}
    return props


# --------------------------------------------------------------------------------------------------- bands


def _number(value: float) -> float | str:
    """A nodata value as the raster extension writes it: a number, or "nan" / "inf" / "-inf"."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return int(value) if float(value).is_integer() else float(value)


def _micrometres(value: str | None, units: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    factor = {"nanometers": 1e-3, "nanometer": 1e-3, "nm": 1e-3, "micrometers": 1.0, "micrometer": 1.0,
              "um": 1.0, "µm": 1.0, "microns": 1.0, "millimeters": 1e3, "mm": 1e3}.get(units.lower(), 1e-3)
    return round(number * factor, 9)


def _bands(ds) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``eo:bands`` (empty when the bands have no wavelengths) and ``raster:bands`` of the open dataset."""
    eo, raster = [], []
    resolution = abs(ds.transform.a) if abs(ds.transform.a) == abs(ds.transform.e) else None
    for i in range(ds.count):
        tags = ds.tags(i + 1)
        units = tags.get("wavelength_units") or ds.tags().get("wavelength_units") or "Nanometers"
        description = ds.descriptions[i] or f"band {i + 1}"
        band: dict[str, Any] = {"name": _BAND_SUFFIX.sub("", description) or f"band {i + 1}"}
        centre = _micrometres(tags.get("wavelength"), units)
        if centre is not None:
            band["center_wavelength"] = centre
            fwhm = _micrometres(tags.get("fwhm"), units)
            if fwhm is not None:
                band["full_width_half_max"] = fwhm
            if tags.get("bbl") == "0":
                band["description"] = "bad band of the HSI: nodata"
            eo.append(band)
        dtype = ds.dtypes[i]
        info: dict[str, Any] = {"data_type": dtype if dtype in _RASTER_TYPES else "other",
                                "scale": float(ds.scales[i]), "offset": float(ds.offsets[i])}
        if ds.nodatavals[i] is not None:
            info["nodata"] = _number(ds.nodatavals[i])
        if resolution is not None:
            info["spatial_resolution"] = resolution
        raster.append(info)
    return (eo if len(eo) == ds.count else []), raster


# --------------------------------------------------------------------------------------------------- Items


def _href(target: str | os.PathLike, folder: Path) -> str:
    """A link from ``folder`` to ``target``: a relative path for a local file, the URL for a remote one."""
    text = os.fspath(target)
    if is_remote(text):
        for prefix, scheme in (("/vsis3/", "s3://"), ("/vsigs/", "gs://"), ("/vsiaz/", "az://")):
            if text.startswith(prefix):
                return scheme + text[len(prefix):]
        if text.startswith("/vsicurl/"):
            return text[len("/vsicurl/"):]
        return text
    relative = os.path.relpath(os.path.abspath(text), os.path.abspath(folder))
    relative = Path(relative).as_posix()
    return relative if relative.startswith("../") else f"./{relative}"


def item_path_for(output: str | os.PathLike) -> Path:
    """Where batch writes an output's Item: beside it, ``<output stem>.stac.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.stac.json")


def _read_report(ds) -> dict[str, Any]:
    text = ds.tags().get("geolift_report")
    if not text:
        return {}
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def item_for_output(
    output: str | os.PathLike,
    item_path: str | os.PathLike,
    *,
    datetime: str | None = None,
    qa: str | os.PathLike | None = None,
    collection: str | os.PathLike | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The STAC Item (a dict) of the geolift output ``output``, to be saved at ``item_path`` (hrefs are relative to
    its folder). ``datetime`` is ``--stac-datetime``; ``qa`` adds the reliability layer as an asset;
    ``collection`` (the Collection's file) adds the collection link. ``InputError`` when ``output`` cannot be read."""
    output = Path(output)
    folder = Path(os.path.abspath(item_path)).parent
    try:
        with rasterio.open(output) as ds:
            if ds.crs is None:
                raise InputError(f"{output} has no CRS; a STAC Item needs one.")
            report = _read_report(ds)
            version = ds.tags().get("geolift_version")
            geometry, bbox = _footprint(ds.crs, ds.bounds)
            projection = _projection(ds)
            eo_bands, raster_bands = _bands(ds)
            is_cog = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            gsd = abs(ds.transform.a) if ds.crs.is_projected and ds.crs.linear_units in ("metre", "meter") else None
    except GDAL_ERRORS as exc:
        raise InputError(f"Cannot read {output} to describe it in a STAC Item ({gdal_message(exc)}).") from None
    options = report.get("options") or {}
    now = now or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    properties: dict[str, Any] = item_datetime(report, datetime, now)
    properties["created"] = _iso(now)
    if gsd is not None:
        properties["gsd"] = gsd
    properties |= projection
    properties |= {
        "geolift:version": version or __version__,
        "geolift:preset": options.get("preset"),
        "geolift:seed": options.get("seed"),
        "geolift:steps": options.get("steps"),
        "geolift:options": options,
        "geolift:srf": report.get("srf"),
        "geolift:msi_bands": report.get("msi_bands"),
        "geolift:refined": report.get("refined"),
        "geolift:pair_check": (report.get("pair_check") or {}).get("verdict"),
    }
    for key in ("hsi_product", "msi_product"):
        if report.get(key):
            properties[f"geolift:{key}"] = report[key]
    properties = {k: v for k, v in properties.items() if v is not None or k in ("datetime", "proj:epsg")}
    media = "image/tiff; application=geotiff" + ("; profile=cloud-optimized" if is_cog else "")
    data: dict[str, Any] = {"href": _href(output, folder), "type": media, "roles": ["data"],
                            "title": "High-resolution hyperspectral image (geolift)"}
    if eo_bands:
        data["eo:bands"] = eo_bands
    data["raster:bands"] = raster_bands
    assets = {"data": data}
    if qa is not None:
        try:
            with rasterio.open(qa) as ds:
                _, qa_bands = _bands(ds)
                qa_cog = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        except GDAL_ERRORS as exc:
            raise InputError(f"Cannot read the reliability layer {qa} ({gdal_message(exc)}).") from None
        assets["qa"] = {"href": _href(qa, folder), "roles": ["metadata", "quality"],
                        "type": "image/tiff; application=geotiff" + ("; profile=cloud-optimized" if qa_cog else ""),
                        "title": "Reliability layer (geolift --qa)", "raster:bands": qa_bands}
    links = [{"rel": "derived_from", "href": _href(p, folder), "title": role}
             for role, paths in (("HSI", report.get("hsi") or []), ("MSI", report.get("msi") or []))
             for p in paths]
    item: dict[str, Any] = {
        "type": "Feature", "stac_version": STAC_VERSION,
        "stac_extensions": [EXTENSIONS["eo"], EXTENSIONS["raster"], EXTENSIONS["projection"]]
        if eo_bands else [EXTENSIONS["raster"], EXTENSIONS["projection"]],
        "id": output.stem, "geometry": geometry, "bbox": bbox, "properties": properties, "links": links,
        "assets": assets,
    }
    if collection is not None:
        collection_href = _href(collection, folder)
        item["collection"] = _collection_id(Path(collection))
        item["links"] += [{"rel": "collection", "href": collection_href, "type": "application/json"},
                          {"rel": "parent", "href": collection_href, "type": "application/json"},
                          {"rel": "root", "href": collection_href, "type": "application/json"}]
    return item


def json_bytes(data: Any) -> bytes:
    """``data`` as the JSON text every Item and Collection is written as: indented, no NaN, a final newline."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON to ``path`` through a hidden temporary file renamed into place (never half a file);
    ``OutputError`` when it cannot be written."""
    import tempfile

    from geolift.io.paths import NEW_FILE_MODE

    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.parent.is_dir():
        raise OutputError(f"The folder of {path} does not exist.")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.geolift-tmp-", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json_bytes(data))
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(f"Cannot write {path} ({reason}).") from None
    return path


def write_item(output: str | os.PathLike, item_path: str | os.PathLike, **kwargs: Any) -> Path:
    """Make the Item of ``output`` (:func:`item_for_output`) and write it to ``item_path`` atomically."""
    return write_json_atomic(item_for_output(output, item_path, **kwargs), item_path)


# --------------------------------------------------------------------------------------------------- Collections


def _collection_id(path: Path) -> str:
    name = path.resolve().parent.name or "geolift"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _interval(item: Mapping[str, Any]) -> tuple[str, str] | None:
    props = item["properties"]
    if props.get("geolift:datetime_source") == "unknown":
        return None
    if props.get("datetime"):
        return props.get("start_datetime", props["datetime"]), props.get("end_datetime", props["datetime"])
    return props["start_datetime"], props["end_datetime"]


def collection_for_items(items: Iterable[tuple[Mapping[str, Any], Path]], collection_path: str | os.PathLike,
                         *, description: str | None = None) -> dict[str, Any]:
    """A STAC Collection linking ``items`` (``(item, where it is saved)``), its extent covering them all: the union
    of their bboxes, and from the earliest start to the latest end of those whose time is known (open when none)."""
    collection_path = Path(os.path.abspath(collection_path))
    folder = collection_path.parent
    items = list(items)
    boxes = [item["bbox"] for item, _ in items]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes)] if boxes else [-180.0, -90.0, 180.0, 90.0]
    intervals = [i for i in (_interval(item) for item, _ in items) if i is not None]
    times = [_parse_time(t) for pair in intervals for t in pair]
    interval = [_iso(min(times)), _iso(max(times))] if times else [None, None]
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [],
        "id": _collection_id(collection_path),
        "title": f"geolift outputs in {folder.name}",
        "description": description or (f"High-resolution hyperspectral images fused by geolift {__version__} "
                                       f"(SpectraLift), one Item per output."),
        "license": "various",  # each output inherits the terms of its inputs
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "summaries": {"geolift:version": sorted({str(item["properties"].get("geolift:version")) for item, _ in items})},
        "links": [{"rel": "root", "href": "./" + collection_path.name, "type": "application/json"}]
        + [{"rel": "item", "href": _href(path, folder), "type": "application/geo+json", "title": item["id"]}
           for item, path in items],
    }


def _item_written_for(output: str | os.PathLike, path: Path) -> dict[str, Any] | None:
    """The Item at ``path`` if it was written after ``output`` and reads as JSON; None otherwise."""
    try:
        if path.stat().st_mtime < Path(output).stat().st_mtime:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def batch_collection(outputs: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
                     collection_path: str | os.PathLike, *,
                     reuse_items: bool = False) -> tuple[Path, list[Path], list[str]]:
    """Write one Item beside each ``(output, qa or None)`` (:func:`item_path_for`) and the Collection linking them at
    ``collection_path``; returns the Collection's path, the Items' paths and a sentence per output that failed
    (its Item is left out; the others are written). With ``reuse_items``, an Item already beside its output and
    newer than it (batch workers write them) is read instead of made again."""
    written: list[tuple[dict[str, Any], Path]] = []
    failures: list[str] = []
    for output, qa in outputs:
        path = item_path_for(output)
        try:
            item = _item_written_for(output, path) if reuse_items else None
            if item is None:
                item = item_for_output(output, path, qa=qa, collection=collection_path)
                write_json_atomic(item, path)
        except (InputError, OutputError) as exc:
            failures.append(f"{Path(output).name}: {exc}")
            continue
        written.append((item, path))
    collection = collection_for_items(written, collection_path)
    return write_json_atomic(collection, collection_path), [p for _, p in written], failures
