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

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.folders import ProductFiles, find_product_files, metadata_root
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]


_METADATA = re.compile(r"ENMAP01-.*-METADATA\.XML$", re.IGNORECASE)
MASK_LAYERS = (("QL_QUALITY_CLOUD", "cloud"), ("QL_QUALITY_CLOUDSHADOW", "cloud shadow"), ("QL_QUALITY_HAZE", "haze"),
               ("QL_QUALITY_SNOW", "snow"), ("QL_QUALITY_CIRRUS", "cirrus"), ("QL_PIXELMASK", "detector no-data"))


def find(path: PathLike) -> ProductFiles | None:
    """The product at ``path`` (its folder, its METADATA.XML, or its ZIP), or None when it is not one."""
    return find_product_files(path, _METADATA, "EnMAP")


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


def open(found: ProductFiles, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The product as a :class:`Scene`: wavelengths, FWHM, gains and offsets from the metadata, quality masks."""
    root = metadata_root(found)
    table = _band_table(root, found.metadata)
    image = found.file("SPECTRAL_IMAGE")
    if image is None:
        raise InputError(f"The EnMAP product {found.name} has no SPECTRAL_IMAGE file next to its METADATA.XML.")
    cube = open_scene(image, check_data=False)
    if cube.count != table["wavelengthCenterOfBand"].size:
        raise MetadataError(f"{found.metadata} describes {table['wavelengthCenterOfBand'].size} bands but "
                            f"{Path(image).name} has {cube.count}.")
    masks = tuple(MaskLayer(name, path) for suffix, name in MASK_LAYERS
                  if (path := found.file(suffix)) is not None)
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
