"""Which sensor bands the HR-MSI holds, and their response curves: never guessed from band positions.

The MSI's bands are named by ``--bands``, by their own names (descriptions, file-name tokens), by their own band
centres, or by a count equal to the sensor's; otherwise geolift stops and lists the sensor's bands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from geolift import srf
from geolift.errors import InputError, MetadataError, SensorError
from geolift.io import Scene

__all__ = ["identify_bands", "msi_product_choices", "msi_response_curves"]

log = logging.getLogger("geolift")

#: Spellings that name a sensor family rather than one spacecraft: they agree with any product of the family.
FAMILY_SPELLINGS = {"sentinel2": {"sentinel2", "s2"}, "landsat": {"landsat"}}


def msi_product_choices(msi: Scene, sensor: str | None, bands: Sequence[str] | None,
                        srf_path: str | None = None) -> tuple[Scene, str | None, Sequence[str] | None, bool]:
    """What an MSI product settles: its sensor (a ``--sensor`` must agree), ``--bands`` as a selection of its bands.

    Returns the scene (restricted to the selected bands), the sensor, the band names still to identify (None: the
    product's own names identify them) and whether bands the HSI does not cover are left out (by default a product
    offers every band of its sensor, and the HSI decides which can be used). A raster that is no product passes
    through unchanged.
    """
    product_sensor = msi.tags.get("srf_sensor")
    if not product_sensor:
        return msi, sensor, bands, False
    label = f"{msi.tags.get('sensor', product_sensor)} product {msi.tags.get('product_name', msi.path)}"
    if srf_path:
        raise SensorError(f"The MSI is a {label}, whose spectral responses geolift takes from its library "
                          f"({product_sensor}); leave out --srf.")
    if sensor:
        spelling = "".join(ch for ch in sensor.lower() if ch.isalnum())
        family = msi.tags.get("sensor_family", "")
        if spelling not in FAMILY_SPELLINGS.get(family, ()) and srf.load_sensor(sensor).name != product_sensor:
            raise SensorError(f"--sensor {sensor} does not match the MSI, a {label} (SRF set {product_sensor}); "
                              f"leave --sensor out or give {product_sensor}.")
    log.info("MSI sensor %s from the product %s.", product_sensor, msi.tags.get("product_name", msi.path))
    if not bands:
        return msi, product_sensor, None, True
    curves = srf.load_sensor(product_sensor)
    have = [curves.resolve(name) for name in msi.band_names]
    wanted = [curves.resolve(b) for b in bands]
    missing = [b for b in wanted if b not in have]
    if missing:
        raise InputError(f"--bands asks for {', '.join(missing)}, which the {label} does not hold; it holds "
                         f"{', '.join(have)}.")
    return msi.take_bands(sorted(have.index(b) for b in wanted)), product_sensor, None, False




def msi_response_curves(msi: Scene, sensor: str | None = None, srf_path: str | None = None,
                        bands: Sequence[str] | None = None) -> tuple[srf.SRFSet, list[str]]:
    """The SRF set and the band names (one per MSI band, in file order) for the HR-MSI."""
    if sensor and srf_path:
        raise SensorError("Give either --sensor or --srf, not both.")
    if srf_path:
        curves = srf.load_srf_csv(srf_path)
    elif sensor:
        curves = srf.load_sensor(sensor)
    else:
        if msi.wavelengths_nm is None or msi.fwhm_nm is None:
            raise MetadataError(
                f"{msi.path} has no wavelength and FWHM metadata, so its spectral responses are unknown; "
                "name the sensor with --sensor (see `geolift sensors`) or give --srf FILE.csv."
            )
        names = [f"band{i + 1}" for i in range(msi.count)]
        curves = srf.gaussian_srf(msi.wavelengths_nm, msi.fwhm_nm, names=names, name="MSI metadata")
        return curves, names
    return curves, identify_bands(msi, curves, bands)


def identify_bands(msi: Scene, curves: srf.SRFSet, bands: Sequence[str] | None) -> list[str]:
    """Map each MSI band to a sensor band, never by guessing; the log says which rule decided.

    In order: ``--bands``; the bands' names (descriptions, file-name tokens; a position such as ``band 3`` is not a
    name); the MSI's own band centres, each inside one sensor band's half-maximum range; as many bands as the sensor
    has, taken in order. Otherwise an ``InputError`` lists the sensor's bands.
    """
    listing = ", ".join(curves.band_names)
    if bands:
        if len(bands) != msi.count:
            raise InputError(
                f"{msi.path} has {msi.count} band(s) but --bands names {len(bands)} ({', '.join(bands)})."
            )
        resolved = [curves.resolve(b) for b in bands]
        log.info("MSI bands %s, as given by --bands.", ", ".join(resolved))
        return resolved
    named = msi.band_names if all(msi.named_bands) else None
    for rule, candidates in (("their names", named), ("their descriptions", msi.descriptions)):
        resolved = _try_resolve(curves, candidates)
        if resolved:
            log.info("MSI bands %s, identified from %s.", ", ".join(resolved), rule)
            return resolved
    resolved = _bands_by_wavelength(msi, curves)
    if resolved:
        log.info("MSI bands %s, identified from the MSI's band centres (%s nm).", ", ".join(resolved),
                 ", ".join(f"{w:.0f}" for w in msi.wavelengths_nm))
        return resolved
    if msi.count == len(curves.band_names):
        log.info("MSI bands %s: the MSI has as many bands as %s, taken in order.", listing, curves.display_name)
        return list(curves.band_names)
    raise InputError(
        f"Cannot tell which {curves.display_name} bands the {msi.count}-band MSI {msi.path} holds (its bands have "
        f"no names or wavelengths geolift recognises); name them with --bands (the sensor's bands: {listing})."
    )


def _bands_by_wavelength(msi: Scene, curves: srf.SRFSet) -> list[str] | None:
    """Each MSI band centre matched to the sensor band whose half-maximum range holds it (the nearest centroid
    when ranges overlap); None without wavelengths or when two MSI bands would be the same sensor band."""
    if msi.wavelengths_nm is None:
        return None
    ranges, centroids = curves.half_max_ranges_nm(), curves.centroids_nm()
    resolved = []
    for centre in msi.wavelengths_nm:
        inside = np.flatnonzero((ranges[:, 0] <= centre) & (centre <= ranges[:, 1]))
        if inside.size == 0:
            return None
        resolved.append(curves.band_names[int(inside[np.argmin(np.abs(centroids[inside] - centre))])])
    return resolved if len(set(resolved)) == len(resolved) else None


def _try_resolve(curves: srf.SRFSet, names: Sequence[str] | None) -> list[str] | None:
    if not names or not all(names):
        return None
    try:
        resolved = [curves.resolve(str(n)) for n in names]
    except SensorError:
        return None
    return resolved if len(set(resolved)) == len(resolved) else None
