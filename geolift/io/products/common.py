"""What every product reader does once it has its scene: detector overlap, empty bands, mask counts, identity.

Kept here so that EnMAP, PRISMA, EMIT and DESIS follow the same rules and say the same things in the log.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from rasterio.windows import Window

from geolift.errors import InputError
from geolift.io.read import Scene

__all__ = ["IDENTITY_TAGS", "OVERLAP_CHOICES", "finish", "product_identity", "select_detectors"]

log = logging.getLogger("geolift")

#: The tags every reader sets that say which product a scene is (the report's ``hsi_product``/``msi_product``).
IDENTITY_TAGS = ("product_name", "sensor", "processing_level", "acquisition_time")


def product_identity(scene: Scene) -> dict[str, str]:
    """The scene's product identity (empty for a raster that is no product)."""
    return {k: scene.tags[k] for k in IDENTITY_TAGS if k in scene.tags}


#: What to do with the bands of a two-detector instrument where the detectors overlap (EnMAP, PRISMA).
OVERLAP_CHOICES = ("keep", "vnir", "swir")


def select_detectors(scene: Scene, detectors: Sequence[str], overlap: str) -> Scene:
    """Apply the detector-overlap choice: keep both detectors' bands, or only VNIR's or SWIR's in the overlap.

    ``detectors`` names each band's detector ("VNIR" or "SWIR"). The overlap is the range between the first SWIR
    centre and the last VNIR centre; outside it nothing changes. The log says what was kept, so a duplicated range
    is never silent.
    """
    if overlap not in OVERLAP_CHOICES:
        raise InputError(f"Unknown detector-overlap choice {overlap!r}; use one of {', '.join(OVERLAP_CHOICES)}.")
    labels = np.asarray(detectors)
    wl = scene.wavelengths_nm
    vnir, swir = labels == "VNIR", labels == "SWIR"
    if not vnir.any() or not swir.any():
        return scene
    low, high = float(wl[swir].min()), float(wl[vnir].max())
    in_overlap = (wl >= low) & (wl <= high)
    if low > high or not in_overlap.any():
        return scene
    counts = f"{int((in_overlap & vnir).sum())} VNIR and {int((in_overlap & swir).sum())} SWIR bands"
    if overlap == "keep":
        log.info("Detector overlap %.0f-%.0f nm: %s, all kept (--overlap vnir or swir keeps one detector).",
                 low, high, counts)
        return scene
    drop = in_overlap & (swir if overlap == "vnir" else vnir)
    log.info("Detector overlap %.0f-%.0f nm: %s; kept the %s bands (--overlap %s).", low, high, counts,
             overlap.upper(), overlap)
    return scene.take_bands(np.flatnonzero(~drop))


def finish(scene: Scene, *, label: str, check_data: bool) -> Scene:
    """Flag empty bands bad, count each mask's flagged pixels (tag ``masked_pixels``), refuse an empty product.

    Every reader's scene carries the tags ``product_name``, ``sensor`` (for display), ``processing_level`` and
    ``acquisition_time``; an MSI product's also ``srf_sensor`` (its SRF library name, e.g. ``sentinel2b``) and
    ``sensor_family`` (``sentinel2``, ``landsat``), with sensor band names (``B2``, ``B8A``) and values in
    reflectance (its scaling applied).
    """
    scene = replace(scene, good_bands=_bands_with_data(scene))
    if check_data:
        whole = Window(0, 0, scene.width, scene.height)
        counts = {m.name: int(scene.flagged(m, whole, (scene.height, scene.width)).sum()) for m in scene.masks}
        scene.tags["masked_pixels"] = json.dumps(counts)
        if not scene.good_bands.any() or not scene.has_valid_pixels():
            raise InputError(f"The {label} product {scene.tags.get('product_name', '')} has no valid pixel "
                             "(after its quality masks).")
    tags = scene.tags
    log.info("Product: %s %s %s, acquired %s; quality masks: %s.", tags.get("sensor"),
             tags.get("processing_level"), tags.get("product_name"),
             tags.get("acquisition_time") or "at an unknown time", ", ".join(m.name for m in scene.masks) or "none")
    return scene


def _bands_with_data(scene: Scene) -> np.ndarray:
    """Bands with at least one valid pixel in a decimated look (EnMAP fills its water-vapour bands with nodata)."""
    step = max(1, math.ceil(max(scene.width, scene.height) / 256))
    preview = scene.read(out_shape=(max(1, scene.height // step), max(1, scene.width // step)), resampling="nearest")
    return scene.good_bands & np.isfinite(preview).any(axis=(1, 2))
