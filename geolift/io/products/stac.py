"""STAC Items of Sentinel-2 and Landsat scenes (Earth Search, Planetary Computer, USGS) read as the MSI of a fusion.

What is read (the STAC Item specification with its eo and raster extensions, v1: ``eo:bands`` with ``name``,
``common_name``, ``center_wavelength`` in µm, and ``raster:bands`` with ``scale``, ``offset``, ``nodata``,
``spatial_resolution``; or STAC 1.1's ``bands`` with ``name``, ``eo:common_name``, ``eo:center_wavelength``,
``raster:scale``, ``raster:offset``, ``nodata``). Plain JSON, no pystac:

* The item is a local ``.json`` file or an ``http(s)://`` URL (ending in ``.json``, or a STAC API's
  ``…/collections/<id>/items/<id>``), fetched once. Relative asset hrefs are resolved against the item's own
  location; remote hrefs are read by GDAL (``/vsicurl/``, ``/vsis3/``…), window by window, never downloaded whole.
* ``properties.platform`` names the spacecraft and so the spectral responses (``sentinel-2b`` -> ``sentinel2b``,
  ``landsat-8`` or ``LANDSAT_8`` -> ``landsat8``). A platform geolift has no curves for is refused by name: a guess
  between Sentinel-2A and 2B, or Landsat 8 and 9, would change the simulated bands.
* Band assets are the single-band assets with ``eo:bands`` (or ``bands``) whose roles, when given, include ``data``
  or ``reflectance``. Each maps to a sensor band by its band name when the SRF set knows it (``B02``, ``blue``,
  ``rededge1``), else its common name when that names one band of the sensor (``nir08``), else its centre
  wavelength when it lies in exactly one band's half-maximum range; never by position. Multi-band assets (the
  rendered true-colour ``visual``), thumbnails and overviews are left out, and so is a band no rule maps (Landsat's
  thermal ``lwir11``). A band offered twice (Earth Search's ``blue`` COG and ``blue-jp2``; a SAFE item's ``blue``
  at 10 m and ``blue_20m``) is read from the finest resolution, then a Cloud-Optimized GeoTIFF before other
  formats such as JP2 (read in windows over HTTP far more cheaply), then the asset listed first. The log names the
  assets used, and each one left out with why.
* Values: DN x scale + offset from those fields (the file's own scale and offset when the item gives none). Two
  catalogue facts on top of the fields:

  - Earth Search's ``earthsearch:boa_offset_applied: true`` means the COGs' DN already had Sentinel-2's
    baseline-04.00 offset removed, although their ``raster:bands`` still say offset -0.1; the flag wins, as Earth
    Search's maintainers say (github.com/Element84/earth-search issue 9), else every value would be 0.1 too low.
  - An item with no scaling at all (Planetary Computer's sentinel-2-l2a, as far as could be checked) gets the
    agency's rule: Sentinel-2 (L1C and L2A) DN / 10000, minus 0.1 from processing baseline 04.00
    (``s2:processing_baseline``); Landsat Collection 2 Level-2 DN x 2.75e-5 - 0.2. An integer band still unscaled
    is refused: its DN are not reflectance.

* Nodata: the file's own value, else the item's ``nodata``, else 0 (both agencies' fill value for band files).
* Masks: Sentinel-2's ``scl`` asset (scene classification; the classes the Sentinel-2 SAFE reader masks) and
  Landsat's ``qa_pixel`` (the Landsat reader's bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow,
  5 snow), on their own grid if coarser. Without one the log says that clouds are not masked.
* Identity: the item ``id``, the spacecraft, the level (``processing:level``, ``s2:product_type``,
  ``landsat:correction`` or the collection) and ``properties.datetime``.

Planetary Computer's asset URLs need a signature (a SAS token) to be read; an item saved from its API is read as
saved, so sign it before saving (``planetary_computer.sign``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from geolift import srf
from geolift.errors import InputError, MetadataError, SensorError
from geolift.io.paths import PathLike, gdal_path
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.folders import local_path
from geolift.io.products.landsat import QA_MASKS
from geolift.io.products.sentinel2 import SCL_MASKS
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]

log = logging.getLogger("geolift")

SUFFIXES = (".json", ".geojson")
HEAD_BYTES = 256 * 1024  # enough to see "type": "Feature" and stac_version, which items put first
MAX_ITEM_BYTES = 32 * 2**20  # an item is tens of kB; refuse to hold a huge file in memory
TIMEOUT_S = 60
_URL = re.compile(r"^(?:/vsicurl/)?(https?://.+)$", re.IGNORECASE)
_API_ITEM = re.compile(r"/collections/[^/]+/items/[^/]+/?$")
_FEATURE = re.compile(r'"type"\s*:\s*"Feature"')
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Asset roles that say an asset holds measurements (an asset without roles counts too).
DATA_ROLES = {"data", "reflectance"}
_MASK_ASSETS = {  # family -> (asset key, file name) patterns of its classification asset
    "sentinel2": (re.compile(r"scl(?:[-_.].*)?", re.IGNORECASE),
                  re.compile(r"(?:^|_)SCL(?:_\d+m)?\.(?:tiff?|jp2)$", re.IGNORECASE)),
    "landsat": (re.compile(r"qa_pixel(?:[-_.].*)?", re.IGNORECASE), re.compile(r"QA_PIXEL\.tiff?$", re.IGNORECASE)),
}
S2_SCALE, S2_OFFSET = 1e-4, -0.1  # quantification 10000; BOA_ADD_OFFSET / RADIO_ADD_OFFSET -1000 from 04.00
LANDSAT_L2_SCALE, LANDSAT_L2_OFFSET = 2.75e-5, -0.2  # USGS Collection 2 Level-2 surface reflectance
AGENCY_NODATA = 0.0  # DN 0 is no data in Sentinel-2 (ESA) and Landsat Collection 2 (USGS fill) band files


@dataclass(frozen=True)
class Found:
    """A STAC item: its local path or URL, against which relative asset hrefs are resolved."""

    location: str

    @property
    def is_url(self) -> bool:
        return bool(_URL.match(self.location))


@dataclass(frozen=True)
class _BandAsset:
    """One asset chosen as a sensor band, with what the item says about its values."""

    key: str
    band: str  # the SRF set's band name
    rule: str  # what identified it
    path: str  # GDAL path
    scale: float | None
    offset: float | None
    nodata: float | None
    resolution: float  # metres; inf when the item does not say
    form: int  # 0 COG, 1 other, 2 JP2: the order of preference


def find(path: PathLike) -> Found | None:
    """The STAC item at ``path`` (a local ``.json``, or a URL to one), or None when ``path`` is none.

    A local file counts when its start declares a GeoJSON Feature and a ``stac_version``; a URL when it ends in
    ``.json`` or is a STAC API item address (it is fetched only when opened).
    """
    text = os.fspath(path)
    url = _URL.match(text)
    if url:
        route = urllib.parse.urlsplit(url.group(1)).path
        return Found(url.group(1)) if route.lower().endswith(SUFFIXES) or _API_ITEM.search(route) else None
    p = local_path(path)
    if p is None or p.suffix.lower() not in SUFFIXES or not p.is_file():
        return None
    try:
        with p.open("rb") as stream:
            head = stream.read(HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    return Found(str(p.resolve())) if _FEATURE.search(head) and '"stac_version"' in head else None


def open(found: Found, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The item's band assets as one :class:`Scene` in reflectance, with sensor band names, masks and identity."""
    where = found.location
    item = _item(found)
    props = item.get("properties")
    if not isinstance(props, dict):
        raise MetadataError(f"{where} has no properties object; it is not a STAC item, or it is truncated.")
    assets = item.get("assets")
    if not isinstance(assets, dict) or not assets:
        raise MetadataError(f"{where} lists no assets; it is not a STAC item of a scene, or it is truncated.")
    name = str(item.get("id") or Path(urllib.parse.urlsplit(where).path).stem)
    srf_sensor, family, spacecraft = _platform(props, where)
    curves = srf.load_sensor(srf_sensor)
    chosen, left_out = _band_assets(assets, props, curves, found)
    if not chosen:
        reasons = "; ".join(left_out) or "no asset has eo:bands"
        raise MetadataError(f"{where} has no asset geolift can read as a {curves.display_name} band ({reasons}).")
    level = _level(item, props)
    cube = open_scene([b.path for b in chosen], check_data=False)
    scales, offsets, notes = _scaling(chosen, cube, family, level, props, item, where)
    names = tuple(b.band for b in chosen)
    nodata = tuple(own if own is not None else b.nodata if b.nodata is not None else AGENCY_NODATA
                   for own, b in zip(cube.nodata, chosen))
    tags = dict(cube.tags) | {
        "product_name": name, "sensor": spacecraft, "processing_level": level,
        "acquisition_time": str(props.get("datetime") or props.get("start_datetime") or ""),
        "srf_sensor": srf_sensor, "sensor_family": family,
    }
    log.info("STAC item %s: %s.", name, "; ".join(f"{b.band} from asset {b.key} ({b.rule})" for b in chosen))
    if left_out:
        log.info("STAC item %s: not used: %s.", name, "; ".join(left_out))
    for note in notes:
        log.info("STAC item %s: %s.", name, note)
    scene = replace(cube, band_names=names, named_bands=(True,) * len(names), descriptions=names,
                    scales=np.array(scales, dtype=np.float64), offsets=np.array(offsets, dtype=np.float64),
                    nodata=nodata, masks=_masks(assets, family, found, name), tags=tags)
    scene = select_detectors(scene, ["VNIR"] * scene.count, overlap)  # one instrument: only checks the choice
    return finish(scene, label="STAC", check_data=check_data)


def _item(found: Found) -> dict:
    """The item as a dict; a one-item FeatureCollection (a saved search) gives its item."""
    where = found.location
    try:
        document = json.loads(_read(found))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MetadataError(f"{where} is not valid JSON ({exc}); the item may be truncated.") from None
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = [f for f in document.get("features") or () if isinstance(f, dict)]
        if len(features) != 1:
            ids = ", ".join(str(f.get("id")) for f in features[:3]) + (" …" if len(features) > 3 else "")
            raise InputError(f"{where} holds {len(features)} STAC items ({ids or 'none'}); give one item.")
        document = features[0]
    if not isinstance(document, dict) or document.get("type") != "Feature":
        raise MetadataError(f"{where} is not a STAC item (a GeoJSON Feature).")
    return document


def _read(found: Found) -> bytes:
    """The item's bytes: a local file, or one HTTP request (the item is small; its rasters stay remote)."""
    where = found.location
    try:
        if found.is_url:
            request = urllib.request.Request(where, headers={"Accept": "application/geo+json, application/json"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                data = response.read(MAX_ITEM_BYTES + 1)
        else:
            with Path(where).open("rb") as stream:
                data = stream.read(MAX_ITEM_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise InputError(f"Cannot fetch the STAC item {where} ({exc}).") from None
    except urllib.error.URLError as exc:
        raise InputError(f"Cannot fetch the STAC item {where} ({exc.reason}).") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read the STAC item {where} ({exc}).") from None
    if len(data) > MAX_ITEM_BYTES:
        raise InputError(f"{where} is larger than {MAX_ITEM_BYTES // 2**20} MiB; a STAC item is a few tens of kB.")
    return data


def _platform(props: dict, where: str) -> tuple[str, str, str]:
    """(SRF set, family, spacecraft for display) from ``platform`` (``eo:platform`` in pre-1.0 items)."""
    text = props.get("platform") or props.get("eo:platform")
    if not isinstance(text, str) or not text.strip():
        raise MetadataError(f"{where} has no properties.platform, so geolift cannot tell which spacecraft's spectral "
                            "responses apply.")
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    sentinel2, landsat = re.fullmatch(r"sentinel2([a-z])", key), re.fullmatch(r"landsat0*(\d+)", key)
    if sentinel2:
        sensor, family, spacecraft = f"sentinel2{sentinel2[1]}", "sentinel2", f"Sentinel-2{sentinel2[1].upper()}"
    elif landsat:
        sensor, family, spacecraft = f"landsat{landsat[1]}", "landsat", f"Landsat-{landsat[1]}"
    else:
        raise SensorError(f"{where}: platform {text!r} is not a Sentinel-2 or Landsat spacecraft; geolift reads STAC "
                          "items of those.")
    if sensor not in srf.sensors():
        known = ", ".join(s for s in srf.sensors() if s.startswith(family))
        raise SensorError(f"{where}: platform {text!r} ({spacecraft}) has no spectral responses in geolift's library "
                          f"(it has {known}).")
    return sensor, family, spacecraft


def _level(item: dict, props: dict) -> str:
    level = props.get("processing:level")
    if isinstance(level, str) and level.strip():
        return level.strip()
    product = re.fullmatch(r"S2MSI(\w+)", str(props.get("s2:product_type") or "").strip(), re.IGNORECASE)
    if product:
        return f"L{product[1].upper()}"
    correction = props.get("landsat:correction")
    if isinstance(correction, str) and correction.strip():
        return correction.strip()
    return str(item.get("collection") or "")


def _band_assets(assets: dict, props: dict, curves: srf.SRFSet,
                 found: Found) -> tuple[list[_BandAsset], list[str]]:
    """The asset read for each sensor band (in the sensor's band order), and each band asset left out with why."""
    offered: dict[str, list[tuple[_BandAsset, int]]] = {}
    left_out = []
    for position, (key, asset) in enumerate(assets.items()):
        if not isinstance(asset, dict):
            continue
        entries = asset.get("eo:bands") or asset.get("bands")
        if not isinstance(entries, list) or not entries:
            continue
        roles = asset.get("roles")
        if isinstance(roles, list) and roles and not DATA_ROLES & {str(r).lower() for r in roles}:
            left_out.append(f"{key} (roles {', '.join(map(str, roles))})")
            continue
        if len(entries) != 1:
            left_out.append(f"{key} ({len(entries)} bands in one file: a rendered composite, not a band)")
            continue
        href = asset.get("href")
        if not isinstance(href, str) or not href.strip():
            left_out.append(f"{key} (no href)")
            continue
        entry = entries[0]
        if isinstance(entry, int):  # pre-1.0 items index the bands listed in the properties
            listed = props.get("eo:bands")
            entry = listed[entry] if isinstance(listed, list) and 0 <= entry < len(listed) else None
        if not isinstance(entry, dict):
            left_out.append(f"{key} (its band is not described)")
            continue
        band, rule = _identify(entry, curves)
        if band is None:
            left_out.append(f"{key} ({rule})")
            continue
        raster = asset.get("raster:bands")
        raster = raster[0] if isinstance(raster, list) and raster and isinstance(raster[0], dict) else {}
        sources = (entry, raster, asset)
        where = f"{found.location}, asset {key}"
        path = _gdal_href(href.strip(), found)
        chosen = _BandAsset(
            key=key, band=band, rule=rule, path=path,
            scale=_number(_field(sources, "scale", "raster:scale"), "scale", where),
            offset=_number(_field(sources, "offset", "raster:offset"), "offset", where),
            nodata=_number(_field(sources, "nodata"), "nodata", where),
            resolution=_resolution(asset, sources, where), form=_form(asset, path))
        offered.setdefault(band, []).append((chosen, position))
    picked = []
    for band in curves.band_names:
        if band not in offered:
            continue
        ranked = sorted(offered[band], key=lambda pair: (pair[0].resolution, pair[0].form, pair[1]))
        best = ranked[0][0]
        picked.append(best)
        left_out += [f"{other.key} ({band} again: {best.key} is {_why_better(best, other)})" for other, _ in ranked[1:]]
    return picked, left_out


def _identify(entry: dict, curves: srf.SRFSet) -> tuple[str | None, str]:
    """The sensor band an eo band object names, and how it was told; (None, why) when no rule decides."""
    name, common = entry.get("name"), entry.get("common_name", entry.get("eo:common_name"))
    for label, value in (("band name", name), ("common name", common)):
        if isinstance(value, str) and value.strip():
            try:
                return curves.resolve(value.strip()), f"{label} {value.strip()}"
            except SensorError:
                pass
    centre = entry.get("center_wavelength", entry.get("eo:center_wavelength"))
    if isinstance(centre, (int, float)) and math.isfinite(centre):
        nm = 1000.0 * float(centre)
        inside = [b for b, (low, high) in zip(curves.band_names, curves.half_max_ranges_nm()) if low <= nm <= high]
        if len(inside) == 1:
            return inside[0], f"centre {nm:.0f} nm"
    said = ", ".join(str(v) for v in (name, common) if v)
    if isinstance(centre, (int, float)):
        said += f"{', ' if said else ''}{centre} µm"
    return None, f"no {curves.display_name} band matches {said or 'a band with no name or wavelength'}"


def _field(sources: tuple[dict, ...], *keys: str):
    """The first value any source gives under any key: the band object, then raster:bands, then the asset."""
    for source in sources:
        for key in keys:
            if source.get(key) is not None:
                return source[key]
    return None


def _number(value, what: str, where: str) -> float | None:
    """A STAC number; the raster extension also writes nodata as "nan", "inf" or "-inf"."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(f"{where}: {what} {value!r} is not a number.")
    return float(value)


def _resolution(asset: dict, sources: tuple[dict, ...], where: str) -> float:
    """The asset's pixel size in metres (raster spatial_resolution, gsd, proj:transform); inf when unknown."""
    value = _number(_field(sources, "spatial_resolution", "raster:spatial_resolution", "gsd"), "resolution", where)
    if value is None:
        transform = asset.get("proj:transform")
        if isinstance(transform, list) and transform and isinstance(transform[0], (int, float)):
            value = abs(float(transform[0]))
    return value if value is not None and value > 0 else math.inf


def _form(asset: dict, path: str) -> int:
    media = str(asset.get("type") or "").lower()
    if "cloud-optimized" in media:
        return 0
    if "jp2" in media or path.lower().endswith((".jp2", ".j2k")):
        return 2
    return 1


def _why_better(best: _BandAsset, other: _BandAsset) -> str:
    if best.resolution < other.resolution:
        return f"finer ({best.resolution:g} m)"
    if best.form < other.form:
        return "a Cloud-Optimized GeoTIFF" if best.form == 0 else "not a JP2"
    return "listed first"


def _gdal_href(href: str, found: Found) -> str:
    """What GDAL opens for an asset href: URLs mapped to /vsi paths, relative hrefs taken from the item's place."""
    if _SCHEME.match(href) or href.startswith("/vsi"):
        return gdal_path(href)
    if found.is_url:
        return gdal_path(urllib.parse.urljoin(found.location, href))
    return gdal_path(href, base=Path(found.location).parent)


def _scaling(chosen: list[_BandAsset], cube: Scene, family: str, level: str, props: dict, item: dict,
             where: str) -> tuple[list[float], list[float], list[str]]:
    """Each band's scale and offset to reflectance (see the module docstring), and what the log should say."""
    applied = family == "sentinel2" and props.get("earthsearch:boa_offset_applied") is True
    rule = _agency_rule(family, level, props, item, applied)
    scales, offsets, notes = [], [], set()
    for k, band in enumerate(chosen):
        if band.scale is None and band.offset is None:
            scale, offset = float(cube.scales[k]), float(cube.offsets[k])  # the file's own, if any
            if (scale, offset) == (1.0, 0.0) and rule is not None:
                scale, offset = rule[0], rule[1]
                notes.add(f"no scale or offset in the item; {rule[2]}")
        else:
            scale = 1.0 if band.scale is None else band.scale
            offset = 0.0 if band.offset is None else band.offset
            if applied and offset != 0.0:
                notes.add(f"the raster:bands offset {offset:g} is not applied: the item says "
                          "earthsearch:boa_offset_applied, so its DN already have the offset removed")
                offset = 0.0
        if (scale, offset) == (1.0, 0.0) and np.issubdtype(np.dtype(cube.dtypes[k]), np.integer):
            raise MetadataError(f"{where}: asset {band.key} ({band.band}) holds {cube.dtypes[k]} DN with no scale or "
                                "offset in the item or the file, and geolift knows no rule for this item to make them "
                                "reflectance.")
        scales.append(scale)
        offsets.append(offset)
    return scales, offsets, sorted(notes)


def _agency_rule(family: str, level: str, props: dict, item: dict, applied: bool) -> tuple[float, float, str] | None:
    """The agency's DN-to-reflectance rule for an item that gives no scaling, or None when it is not known."""
    if family == "sentinel2":
        baseline = props.get("s2:processing_baseline")
        try:
            since_04 = float(baseline) >= 4.0
        except (TypeError, ValueError):
            return None
        offset = S2_OFFSET if since_04 and not applied else 0.0
        return S2_SCALE, offset, (f"ESA's rule for processing baseline {baseline}: reflectance = "
                                  f"(DN{' - 1000' if offset else ''}) / 10000")
    if family == "landsat" and "l2" in f"{level} {item.get('collection') or ''}".lower():
        return LANDSAT_L2_SCALE, LANDSAT_L2_OFFSET, "USGS's Collection 2 Level-2 rule: DN x 2.75e-5 - 0.2"
    return None


def _masks(assets: dict, family: str, found: Found, name: str) -> tuple[MaskLayer, ...]:
    """The scene classification (Sentinel-2 SCL) or pixel-quality bits (Landsat QA_PIXEL) as masks."""
    key_pattern, file_pattern = _MASK_ASSETS[family]
    candidates = []
    for position, (key, asset) in enumerate(assets.items()):
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href.strip():
            continue
        file_name = urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1]
        if key_pattern.fullmatch(key) or file_pattern.search(file_name):
            path = _gdal_href(href.strip(), found)
            raster = asset.get("raster:bands")
            sources = (raster[0] if isinstance(raster, list) and raster and isinstance(raster[0], dict) else {}, asset)
            rank = (_resolution(asset, sources, f"{found.location}, asset {key}"), _form(asset, path), position)
            candidates.append((rank, key, path))
    what = "an scl (scene classification)" if family == "sentinel2" else "a qa_pixel"
    if not candidates:
        log.warning("STAC item %s has no %s asset: clouds are not masked.", name, what)
        return ()
    _, key, path = min(candidates)
    log.info("STAC item %s: quality masks from asset %s.", name, key)
    if family == "sentinel2":
        return tuple(MaskLayer(label, path, values=values) for label, values in SCL_MASKS.items())
    return tuple(MaskLayer(label, path, bits=bits) for label, bits in QA_MASKS.items())
