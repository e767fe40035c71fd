"""DESIS Level 2A products (DLR's imaging spectrometer on the ISS): the spectral image, METADATA.xml, the quality layer.

What is read (the product is defined by DLR's DESIS Product Specification, PAV-DLR-ICD-003; the element paths and
the QL_QUALITY-2 band order below are those open DESIS readers such as EnMAP-Box and ACOLITE rely on). The file
names carry the product name ``DESIS-HSI-L2A-DT<datatake>_<tile>-<YYYYMMDDTHHMMSS>-V<version>``:

* ``…-METADATA.xml`` (root ``hsi_doc``): per band (``specific/bandCharacterisation/band``, ordered by its
  ``bandNumber``) ``wavelengthCenterOfBand``, ``wavelengthWidthOfBand`` (the FWHM, nm), ``gainOfBand`` and
  ``offsetOfBand`` (value = DN · gain + offset); the acquisition start (``base/temporalCoverage/startTime``);
  ``backgroundValue``, the fill outside the imaged area. Only ``bandCharacterisation`` bands count: ``<band>`` is
  also used for the detector geometry. The file is parsed only when it declares no DTD or entity (as for EnMAP).
* ``…-SPECTRAL_IMAGE.tif``: the int16 cube (235 bands from about 400 to 1000 nm, fewer when binned). Its nodata
  is the file's own, else ``backgroundValue``, else -32768: a background read as reflectance would poison training.
* ``…-QL_QUALITY-2.tif``: one 0/1 band per class (1 shadow, 2 clear land, 3 snow, 4 haze over land, 5 haze over
  water, 6 cloud over land, 7 cloud over water, 8 clear water), then aerosol optical thickness and water vapour as
  values. Shadow, snow, haze (4, 5) and cloud (6, 7) are masks: a pixel they flag reads as nodata. Each mask looks
  at its own bands only (``MaskLayer.bands``): the clear classes and the retrievals are non-zero almost everywhere.
* ``…-QL_QUALITY.tif`` (per-band, per-pixel bit flags) is not read: a mask that flags some bands of a pixel and not
  others does not fit :class:`MaskLayer`.
* Bands with no valid pixel are flagged bad (:func:`common.finish`, as for every product).

DESIS has one detector, so there is no detector overlap to choose in.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.folders import ProductFiles, find_product_files, metadata_root
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]

_METADATA = re.compile(r"^DESIS-HSI-L2A-.+-METADATA\.xml$", re.IGNORECASE)
INT16_FILL = -32768  # what DESIS writes outside the imaged area when neither the image nor the XML says
QUALITY_FILE = "QL_QUALITY-2"
QUALITY_BANDS = 10  # 8 classes, aerosol optical thickness, water vapour
#: Masks from QL_QUALITY-2: name -> its 1-based bands (clear land 2, clear water 8, AOT 9, WV 10 mask nothing).
QUALITY_MASKS = {"cloud": (6, 7), "shadow": (1,), "haze": (4, 5), "snow": (3,)}


def find(path: PathLike) -> ProductFiles | None:
    """The product at ``path`` (its folder, its METADATA.xml, or its ZIP), or None when it is not one.

    A folder or ZIP holding several DESIS products (tiles of one datatake, say) is refused with an ``InputError``
    rather than read as whichever comes first; its METADATA.xml names one.
    """
    return find_product_files(path, _METADATA, "DESIS")


def _band_table(root: ElementTree.Element, where: str) -> dict[str, np.ndarray]:
    """Centre, FWHM, gain and offset per band, in ``bandNumber`` order."""
    bands = root.findall(".//specific/bandCharacterisation/band")
    if not bands:
        raise MetadataError(f"{where} has no specific/bandCharacterisation/band elements; it is not a DESIS "
                            "product's METADATA.xml, or it is truncated.")
    try:
        numbers = [int(b.findtext("bandNumber")) for b in bands]
    except (TypeError, ValueError):
        raise MetadataError(f"{where}: a band lacks a numeric bandNumber.") from None
    if len(set(numbers)) != len(numbers):
        raise MetadataError(f"{where} numbers two bands alike (bandNumber).")
    bands = [b for _, b in sorted(zip(numbers, bands), key=lambda pair: pair[0])]
    table = {}
    for tag in ("wavelengthCenterOfBand", "wavelengthWidthOfBand", "gainOfBand", "offsetOfBand"):
        try:
            table[tag] = np.array([float(b.findtext(tag)) for b in bands], dtype=np.float64)
        except (TypeError, ValueError):
            raise MetadataError(f"{where}: a band lacks a numeric {tag}.") from None
    return table


def _background_value(root: ElementTree.Element, where: str) -> float:
    text = root.findtext(".//backgroundValue")
    if text is None or not text.strip():
        return float(INT16_FILL)
    try:
        return float(text)
    except ValueError:
        raise MetadataError(f"{where}: backgroundValue {text.strip()!r} is not a number.") from None


def _quality_masks(found: ProductFiles, image: Scene) -> tuple[MaskLayer, ...]:
    """The QL_QUALITY-2 flags as masks (none when the product has no such file)."""
    path = found.file(QUALITY_FILE)
    if path is None:
        return ()
    try:
        with rasterio.open(path) as ds:
            count, shape = ds.count, (ds.height, ds.width)
    except RasterioError as exc:
        raise InputError(f"Cannot open the DESIS quality layer {path} ({str(exc).splitlines()[0]}).") from None
    if count != QUALITY_BANDS:
        raise MetadataError(f"{Path(path).name} has {count} bands; a DESIS L2A {QUALITY_FILE} has {QUALITY_BANDS} "
                            "(8 classes, aerosol optical thickness, water vapour).")
    if shape != (image.height, image.width):
        raise MetadataError(f"{Path(path).name} is {shape[0]} x {shape[1]} px but the spectral image is "
                            f"{image.height} x {image.width}.")
    return tuple(MaskLayer(name, path, bands=bands) for name, bands in QUALITY_MASKS.items())


def open(found: ProductFiles, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The product as a :class:`Scene`: wavelengths, FWHM, gains and offsets from the metadata, quality masks.

    ``overlap`` is accepted as for the two-detector products and checked, but DESIS has nothing to choose.
    """
    root = metadata_root(found)
    table = _band_table(root, found.metadata)
    image = found.file("SPECTRAL_IMAGE")
    if image is None:
        raise InputError(f"The DESIS product {found.name} has no SPECTRAL_IMAGE file next to its METADATA.xml.")
    cube = open_scene(image, check_data=False)
    if all(value is None for value in cube.nodata):
        cube = open_scene(image, nodata=_background_value(root, found.metadata), check_data=False)
    centres = table["wavelengthCenterOfBand"]
    if cube.count != centres.size:
        raise MetadataError(f"{found.metadata} describes {centres.size} bands but {Path(image).name} has "
                            f"{cube.count}.")
    tags = dict(cube.tags) | {
        "product_name": found.name, "sensor": "DESIS", "processing_level": "L2A",
        "acquisition_time": (root.findtext(".//base/temporalCoverage/startTime") or "").strip(),
    }
    scene = replace(cube, wavelengths_nm=centres, fwhm_nm=table["wavelengthWidthOfBand"],
                    scales=table["gainOfBand"], offsets=table["offsetOfBand"],
                    wavelength_source="DESIS METADATA.xml", masks=_quality_masks(found, cube), tags=tags)
    scene = select_detectors(scene, ["VNIR"] * scene.count, overlap)  # one detector: only checks the choice
    return finish(scene, label="DESIS", check_data=check_data)
