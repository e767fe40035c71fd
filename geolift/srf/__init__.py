"""Sensor spectral response functions (SRFs) and the MSI-from-HSI response matrix.

SpectraLift needs a matrix ``R`` (m x C) that turns a hyperspectral spectrum (C bands)
into what a multispectral sensor (m bands) would have measured: ``msi = R @ hsi``.
This package owns the bundled sensor curves (``srf_library/``, shipped as the package
``geolift.srf_library``), the names users type for sensors and bands, custom curves
(CSV or Gaussian) and the construction of ``R`` for any hyperspectral band set.

Layout: :mod:`geolift.srf.curves` (library, names, custom curves, units) and :mod:`geolift.srf.response` (the
response matrix and its coverage rule).
"""

from geolift.srf.curves import (
    SRFSet,
    bands,
    describe_sensor,
    gaussian_srf,
    load_sensor,
    load_srf_csv,
    parse_band_list,
    resolve_band,
    sensor_aliases,
    sensor_info,
    sensors,
    to_nm,
)
from geolift.srf.response import (
    FULL_COVERAGE,
    GAP_FACTOR,
    MIN_COVERAGE,
    SpectralResponse,
    build_response,
    response_matrix,
)

__all__ = [
    "FULL_COVERAGE",
    "GAP_FACTOR",
    "MIN_COVERAGE",
    "SRFSet",
    "SpectralResponse",
    "bands",
    "build_response",
    "describe_sensor",
    "gaussian_srf",
    "load_sensor",
    "load_srf_csv",
    "parse_band_list",
    "resolve_band",
    "response_matrix",
    "sensor_aliases",
    "sensor_info",
    "sensors",
    "to_nm",
]
