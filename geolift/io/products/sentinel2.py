"""Sentinel-2 Level-2A and Level-1C products as delivered: the ``.SAFE`` folder, its ``MTD_MSIL*.xml``, or the ZIP.

What is read (ESA, Sentinel-2 Products Specification Document and the L2A Product Definition; the product
metadata file is ``MTD_MSIL2A.xml`` or ``MTD_MSIL1C.xml`` at the top of the ``.SAFE`` folder):

* ``General_Info/Product_Info``: ``PRODUCT_START_TIME`` (the sensing time), ``PROCESSING_BASELINE``,
  ``Datatake/SPACECRAFT_NAME`` (Sentinel-2A/B/C: which SRF set, ``sentinel2a`` …) and the band files
  ``Product_Organisation/Granule_List/Granule/IMAGE_FILE`` (paths in the SAFE without ``.jp2``).
* ``General_Info/Product_Image_Characteristics``: the quantification value (L2A ``BOA_QUANTIFICATION_VALUE``, L1C
  ``QUANTIFICATION_VALUE``, 10000) and, since processing baseline 04.00, the per-band offset (L2A ``BOA_ADD_OFFSET``,
  L1C ``RADIO_ADD_OFFSET``, ``band_id`` 0-12 in the order B1 … B8, B8A, B9 … B12, -1000). Reflectance =
  (DN + offset) / quantification; DN 0 is no data. A baseline-04.00 product without its offsets is refused: read
  without them, every value would be 0.1 too high.
* Each band at its native resolution (10 m: B2 B3 B4 B8; 20 m: B5 B6 B7 B8A B11 B12; 60 m: B1 B9, and B10 in L1C),
  stacked on the 10 m grid (coarser bands resampled bilinearly), as for any band-file list.
* Clouds: L2A's scene classification ``SCL_20m``: no data (0), saturated or defective (1), cloud shadow (3), cloud
  medium and high probability (8, 9), thin cirrus (10) and snow (11) are masked; dark areas, vegetation, bare soil,
  water and unclassified (2, 4-7) are not. L1C since baseline 04.00: ``QI_DATA/MSK_CLASSI_B00.jp2`` (opaque clouds,
  cirrus, snow). Older L1C products give their cloud masks as GML vectors, which geolift does not read (the log says
  so).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from geolift import srf
from geolift.errors import InputError, MetadataError, SensorError
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.folders import ProductFiles, local_path, metadata_root, zip_members
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]

log = logging.getLogger("geolift")

_METADATA = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
#: ``band_id`` order of the offsets and of ``Spectral_Information`` (PSD).
BAND_IDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
NATIVE_RESOLUTION = {"B2": 10, "B3": 10, "B4": 10, "B8": 10, "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20,
                     "B12": 20, "B1": 60, "B9": 60, "B10": 60}
#: SCL classes that are masks, by what geolift reports (L2A Product Definition, scene classification).
SCL_MASKS = {"no data": (0,), "saturated or defective": (1,), "cloud shadow": (3,), "cloud": (8, 9),
             "thin cirrus": (10,), "snow": (11,)}
#: MSK_CLASSI_B00 bands (L1C, baseline 04.00 on).
CLASSI_MASKS = {"cloud": 1, "cirrus": 2, "snow": 3}


@dataclass(frozen=True)
class Found:
    """A SAFE product: its name, the GDAL path of its top folder, its metadata file, the files inside it."""

    name: str
    level: str  # "L2A" or "L1C"
    root: str  # GDAL path of the .SAFE folder (``/vsizip/…`` inside a ZIP)
    metadata: ProductFiles  # how to read the metadata file's bytes
    files: tuple[str, ...]  # paths of all files, relative to the SAFE folder (posix)


def find(path: PathLike) -> Found | None:
    """The product at ``path`` (its ``.SAFE`` folder, its ``MTD_MSIL*.xml`` or its ZIP), or None."""
    p = local_path(path)
    if p is None:
        return None
    names = zip_members(p)
    if names is not None:
        metadata = sorted(n for n in names if _METADATA.match(PurePosixPath(n).name))
        if not metadata:
            return None
        _refuse_several(p, metadata)
        top = PurePosixPath(metadata[0]).parent
        inside = tuple(str(PurePosixPath(n).relative_to(top)) for n in names if PurePosixPath(n).is_relative_to(top))
        root = f"/vsizip/{p.resolve()}/{top}" if str(top) != "." else f"/vsizip/{p.resolve()}"
        files = ProductFiles(_name(top, p), f"{root}/{PurePosixPath(metadata[0]).name}", {}, str(p.resolve()),
                             metadata[0])
        return Found(files.name, _level(metadata[0]), root, files, inside)
    if p.is_file() and _METADATA.match(p.name):
        p = p.parent
    if not p.is_dir():
        return None
    metadata = sorted(c.name for c in p.iterdir() if c.is_file() and _METADATA.match(c.name))
    if not metadata:
        return None
    _refuse_several(p, metadata)
    inside = tuple(str(c.relative_to(p).as_posix()) for c in p.rglob("*") if c.is_file())
    root = str(p.resolve())
    files = ProductFiles(_name(PurePosixPath(p.name), p), f"{root}/{metadata[0]}", {})
    return Found(files.name, _level(metadata[0]), root, files, inside)


def _refuse_several(where: Path, metadata: list[str]) -> None:
    if len(metadata) > 1:
        raise InputError(f"{where} holds {len(metadata)} Sentinel-2 product metadata files "
                         f"({', '.join(metadata[:3])}); give one product's .SAFE folder or ZIP.")


def _name(top: PurePosixPath, given: Path) -> str:
    name = top.name if str(top) not in ("", ".") else given.stem
    return re.sub(r"\.SAFE$", "", name, flags=re.IGNORECASE)


def _level(metadata_name: str) -> str:
    return "L" + _METADATA.match(PurePosixPath(metadata_name).name).group(1).upper()


def _text(root: ElementTree.Element, tag: str) -> str | None:
    found = root.find(f".//{{*}}{tag}")
    if found is None:
        found = root.find(f".//{tag}")
    return None if found is None or found.text is None else found.text.strip()


def _all(root: ElementTree.Element, tag: str) -> list[ElementTree.Element]:
    return root.findall(f".//{{*}}{tag}") or root.findall(f".//{tag}")


def open(found: Found, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The product as a :class:`Scene`: every band in reflectance on the 10 m grid, clouds masked, identity."""
    root = metadata_root(found.metadata)
    where = found.metadata.metadata
    spacecraft = _text(root, "SPACECRAFT_NAME") or ""
    match = re.fullmatch(r"Sentinel-2([A-Z])", spacecraft, flags=re.IGNORECASE)
    if match is None:
        raise MetadataError(f"{where}: SPACECRAFT_NAME {spacecraft!r} is not a Sentinel-2 unit; the file may be "
                            "truncated.")
    srf_sensor = f"sentinel2{match.group(1).lower()}"
    if srf_sensor not in srf.sensors():
        raise SensorError(f"{found.name} comes from {spacecraft}, whose spectral responses geolift does not have "
                          f"(it has {', '.join(s for s in srf.sensors() if s.startswith('sentinel2'))}).")
    baseline = _text(root, "PROCESSING_BASELINE") or ""
    quantification = _number(_text(root, "BOA_QUANTIFICATION_VALUE" if found.level == "L2A"
                                   else "QUANTIFICATION_VALUE"), "quantification value", where)
    offsets = _offsets(root, found.level, baseline, where)
    bands = _band_files(root, found, where)
    cube = open_scene([f"{found.root}/{path}" for path in bands.values()], nodata=0.0, check_data=False)
    names = tuple(bands)
    tags = dict(cube.tags) | {
        "product_name": found.name, "sensor": spacecraft, "processing_level": found.level,
        "acquisition_time": _text(root, "PRODUCT_START_TIME") or "", "srf_sensor": srf_sensor,
        "sensor_family": "sentinel2", "processing_baseline": baseline,
    }
    scene = replace(cube, band_names=names, named_bands=(True,) * len(names), descriptions=names,
                    scales=np.full(len(names), 1.0 / quantification),
                    offsets=np.array([offsets.get(b, 0.0) / quantification for b in names]),
                    masks=_masks(found, baseline), tags=tags)
    log.info("Sentinel-2 %s %s: baseline %s, reflectance = (DN %+g) / %g.", found.level, found.name, baseline or "?",
             offsets.get("B2", 0.0), quantification)
    scene = select_detectors(scene, ["VNIR"] * scene.count, overlap)  # one instrument: only checks the choice
    return finish(scene, label="Sentinel-2", check_data=check_data)


def _number(text: str | None, what: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MetadataError(f"{where} gives no usable {what} ({text!r}); the file may be truncated.") from None
    if value <= 0:
        raise MetadataError(f"{where}: the {what} {value} is not positive.")
    return value


def _offsets(root: ElementTree.Element, level: str, baseline: str, where: str) -> dict[str, float]:
    """The per-band DN offsets by band name; none before baseline 04.00, required from it on."""
    elements = _all(root, "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET")
    offsets = {}
    for element in elements:
        try:
            offsets[BAND_IDS[int(element.get("band_id", ""))]] = float(element.text)
        except (ValueError, TypeError, IndexError):
            raise MetadataError(f"{where}: an offset has no usable band_id or value.") from None
    try:
        needs_offsets = float(baseline) >= 4.0
    except ValueError:
        needs_offsets = False
    if needs_offsets and not offsets:
        raise MetadataError(f"{where}: processing baseline {baseline} products carry per-band offsets "
                            f"({'BOA_ADD_OFFSET' if level == 'L2A' else 'RADIO_ADD_OFFSET'}), but this one has none; "
                            "the file may be truncated.")
    return offsets


def _band_files(root: ElementTree.Element, found: Found, where: str) -> dict[str, str]:
    """Each band's file at its native resolution (relative to the SAFE folder), in the sensor's band order."""
    listed = [f"{item.text.strip()}.jp2" for item in _all(root, "IMAGE_FILE") if item.text]
    present = set(found.files)
    chosen = {}
    for band in BAND_IDS:
        token = f"B{int(band[1:]):02d}" if band[1:].isdigit() else band
        suffix = f"_{token}_{NATIVE_RESOLUTION[band]}m.jp2" if found.level == "L2A" else f"_{token}.jp2"
        candidates = [path for path in listed if path.endswith(suffix) and path in present]
        if candidates:
            chosen[band] = candidates[0]
    if not chosen:
        raise InputError(f"{where} lists no band file that is in the product ({len(listed)} listed); the product may "
                         "be incomplete.")
    return chosen


def _masks(found: Found, baseline: str) -> tuple[MaskLayer, ...]:
    if found.level == "L2A":
        scl = [path for path in found.files if path.endswith("_SCL_20m.jp2")]
        if not scl:
            log.warning("%s has no SCL_20m layer: clouds are not masked.", found.name)
            return ()
        return tuple(MaskLayer(name, f"{found.root}/{scl[0]}", values=values) for name, values in SCL_MASKS.items())
    classi = [path for path in found.files if path.endswith("QI_DATA/MSK_CLASSI_B00.jp2")]
    if not classi:
        log.info("%s (baseline %s) has no MSK_CLASSI_B00 raster (older products give cloud masks as GML vectors): "
                 "clouds are not masked.", found.name, baseline or "?")
        return ()
    return tuple(MaskLayer(name, f"{found.root}/{classi[0]}", bands=(band,)) for name, band in CLASSI_MASKS.items())
