"""EnMAP Level 2A (and 1C) products: the spectral image, METADATA.XML and the quality layers.

What is read (EnMAP L2A product layout, DLR; the file names carry the product name
``ENMAP01-____L2A-DT…_<start>Z_…``):

* ``…-METADATA.XML``: per band (``specific/bandCharacterisation/bandID``) ``wavelengthCenterOfBand``,
  ``FWHMOfBand`` (nm), ``GainOfBand`` and ``OffsetOfBand`` (value = DN · gain + offset); the acquisition start
  (``base/temporalCoverage/startTime``). The file is parsed only when it declares no DTD or entity (a downloaded
  file must not make the parser expand anything).
* ``…-SPECTRAL_IMAGE.TIF`` (or the ENVI ``.BSQ``/``.BIL``/``.BIP`` variants): the cube, its nodata value.
* Quality layers, where present: ``QL_QUALITY_CLOUD``, ``…CLOUDSHADOW``, ``…HAZE``, ``…SNOW``, ``…CIRRUS`` and
  ``QL_PIXELMASK``: a pixel any of them flags reads as nodata, so it is left out of training, the shift estimate,
  the band agreement and the consistency step, and is nodata in the output.
* Bands with no valid pixel (EnMAP fills its water-vapour bands with nodata) are flagged bad.

The VNIR and SWIR detectors overlap (about 900-1000 nm); ``specific/{vnir,swir}ProductQuality/expectedChannelsList``
says which bands belong to which. ``overlap`` keeps both sets (the default; geolift handles bands in any wavelength
order) or only one detector's bands in the overlap.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products.common import _bands_with_data, finish, select_detectors  # noqa: F401
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]

log = logging.getLogger("geolift")

_METADATA = re.compile(r"ENMAP01-.*-METADATA\.XML$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".TIF", ".TIFF", ".BSQ", ".BIL", ".BIP")
MASK_LAYERS = (("QL_QUALITY_CLOUD", "cloud"), ("QL_QUALITY_CLOUDSHADOW", "cloud shadow"), ("QL_QUALITY_HAZE", "haze"),
               ("QL_QUALITY_SNOW", "snow"), ("QL_QUALITY_CIRRUS", "cirrus"), ("QL_PIXELMASK", "detector no-data"))


@dataclass(frozen=True)
class Found:
    """Where an EnMAP product's files are: GDAL paths by file name, and how to read the metadata's bytes."""

    name: str  # the product name (the file names' common prefix)
    metadata: str  # the METADATA.XML's GDAL path
    files: dict[str, str]  # upper-case file name -> GDAL path
    archive: str | None = None  # the ZIP, when the product is one
    member: str | None = None  # the METADATA.XML inside it


def find(path: PathLike) -> Found | None:
    """The product at ``path`` (its folder, its METADATA.XML, or its ZIP), or None when it is not one."""
    text = os.fspath(path)
    if text.startswith("/vsi") or "://" in text:
        return None
    p = Path(text).expanduser()
    if p.is_file() and p.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(p) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        members = [n for n in names if _METADATA.search(Path(n).name)]
        if not members:
            return None
        folder = str(Path(members[0]).parent)
        prefix = f"/vsizip/{os.path.abspath(p)}"
        files = {Path(n).name.upper(): f"{prefix}/{n}" for n in names if str(Path(n).parent) == folder}
        return Found(_product_name(members[0]), f"{prefix}/{members[0]}", files, os.path.abspath(p), members[0])
    if p.is_file() and _METADATA.search(p.name):
        p = p.parent
    if p.is_dir():
        metadata = [c for c in p.iterdir() if _METADATA.search(c.name)]
        if metadata:
            files = {c.name.upper(): str(c.resolve()) for c in p.iterdir() if c.is_file()}
            return Found(_product_name(metadata[0].name), str(metadata[0].resolve()), files)
    return None


def _product_name(metadata_name: str) -> str:
    return re.sub(r"-METADATA\.XML$", "", Path(metadata_name).name, flags=re.IGNORECASE)


def _metadata_root(found: Found) -> ElementTree.Element:
    try:
        if found.archive is not None:
            with zipfile.ZipFile(found.archive) as archive:
                data = archive.read(found.member)
        else:
            data = Path(found.metadata).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"Cannot read {found.metadata} ({exc}).") from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise MetadataError(f"{found.metadata} declares a DTD or entities; geolift does not expand them in a "
                            "downloaded file.")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise MetadataError(f"{found.metadata} is not valid XML ({exc}); the product may be truncated.") from None


def _band_table(root: ElementTree.Element, where: str) -> dict[str, np.ndarray]:
    bands = root.findall(".//specific/bandCharacterisation/bandID")
    if not bands:
        raise MetadataError(f"{where} has no specific/bandCharacterisation/bandID elements; it is not an EnMAP "
                            "product's METADATA.XML, or it is truncated.")
    bands = sorted(bands, key=lambda b: int(b.get("number", "0")))
    table = {}
    for tag in ("wavelengthCenterOfBand", "FWHMOfBand", "GainOfBand", "OffsetOfBand"):
        try:
            table[tag] = np.array([float(b.findtext(tag)) for b in bands], dtype=np.float64)
        except (TypeError, ValueError):
            raise MetadataError(f"{where}: a band lacks a numeric {tag}.") from None
    return table


def _file(found: Found, suffix: str) -> str | None:
    for ext in _IMAGE_SUFFIXES:
        path = found.files.get(f"{found.name}-{suffix}{ext}".upper())
        if path is not None:
            return path
    return None


def open(found: Found, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The product as a :class:`Scene`: wavelengths, FWHM, gains and offsets from the metadata, quality masks."""
    root = _metadata_root(found)
    table = _band_table(root, found.metadata)
    image = _file(found, "SPECTRAL_IMAGE")
    if image is None:
        raise InputError(f"The EnMAP product {found.name} has no SPECTRAL_IMAGE file next to its METADATA.XML.")
    cube = open_scene(image, check_data=False)
    if cube.count != table["wavelengthCenterOfBand"].size:
        raise MetadataError(f"{found.metadata} describes {table['wavelengthCenterOfBand'].size} bands but "
                            f"{Path(image).name} has {cube.count}.")
    masks = tuple(MaskLayer(name, path) for suffix, name in MASK_LAYERS
                  if (path := _file(found, suffix)) is not None)
    level = "L1C" if "L1C" in found.name.upper() else "L2A"
    tags = dict(cube.tags) | {
        "product_name": found.name, "sensor": "EnMAP", "processing_level": level,
        "acquisition_time": (root.findtext(".//base/temporalCoverage/startTime") or "").strip(),
    }
    scene = replace(cube, wavelengths_nm=table["wavelengthCenterOfBand"], fwhm_nm=table["FWHMOfBand"],
                    scales=table["GainOfBand"], offsets=table["OffsetOfBand"],
                    wavelength_source="EnMAP METADATA.XML", masks=masks, tags=tags)
    scene = select_detectors(scene, _detectors(root, cube.count, found.metadata), overlap)
    return finish(scene, label="EnMAP", check_data=check_data)


def _detectors(root: ElementTree.Element, count: int, where: str) -> list[str]:
    """Each band's detector from ``specific/{vnir,swir}ProductQuality/expectedChannelsList`` (1-based numbers)."""
    labels = ["?"] * count
    for det in ("vnir", "swir"):
        text = root.findtext(f".//specific/{det}ProductQuality/expectedChannelsList") or ""
        try:
            numbers = [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise MetadataError(f"{where}: {det}ProductQuality/expectedChannelsList is not a list of band "
                                "numbers.") from None
        for n in numbers:
            if 1 <= n <= count:
                labels[n - 1] = det.upper()
    return labels
