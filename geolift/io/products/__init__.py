"""Satellite products as users download them, read as one :class:`~geolift.io.Scene` (one module per family).

:func:`open_product` recognises a product from the path a user gives: its folder; its main metadata or data file
(EnMAP/DESIS ``METADATA.XML``, PRISMA ``.he5``, EMIT ``.nc``, Sentinel-2 ``MTD_MSIL*.xml``, Landsat ``MTL``); the
delivered ZIP, read through GDAL's ``/vsizip/`` and never unpacked (a Landsat ``.tar`` through ``/vsitar/``); or a
STAC Item (a JSON file or URL). It returns the scene with the product's wavelengths or band names, FWHM, scaling,
bad bands, quality masks and identity (name, sensor, level, acquisition time in the scene's tags). A path that is
no known product gives None, and :func:`geolift.io.open_scene` reads it as a raster.
"""

from __future__ import annotations

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike
from geolift.io.products import desis, emit, enmap, landsat, prisma, sentinel2, stac
from geolift.io.read import Scene

__all__ = ["is_product", "open_product"]

#: Readers in the order they are tried; each has ``find(path)`` and ``open(found, ...)``.
READERS = (enmap, prisma, desis, emit, sentinel2, landsat, stac)


def open_product(path: PathLike, *, require_wavelengths: bool = False, check_data: bool = True,
                 overlap: str = "keep") -> Scene | None:
    """The scene of the product at ``path``, or None when ``path`` is not a product geolift knows.

    ``overlap`` says what to do where two detectors overlap (:data:`common.OVERLAP_CHOICES`).
    """
    for reader in READERS:
        found = reader.find(path)
        if found is not None:
            scene = reader.open(found, check_data=check_data, overlap=overlap)
            if require_wavelengths and scene.wavelengths_nm is None:
                raise MetadataError(f"{path} is a multispectral {scene.tags.get('sensor', '')} product; the first "
                                    "input must be the hyperspectral scene.")
            return scene
    return None


def is_product(path: PathLike) -> bool:
    """Whether ``path`` is one product geolift reads, without opening its rasters (a folder holding several
    products is not one: opening it says so)."""
    try:
        return any(reader.find(path) is not None for reader in READERS)
    except InputError:
        return False

