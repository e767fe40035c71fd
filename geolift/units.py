"""Wavelength units: the one place that knows how files and SRF tables spell them.

Raster metadata (ENVI headers, band tags, descriptions) and SRF tables write units in many ways ("nm",
"Nanometers", "µm", "Micrometers", "microns", ENVI's "Unknown"); both :mod:`geolift.io` and :mod:`geolift.srf`
read them here, so a spelling one accepts the other accepts too.
"""

from __future__ import annotations

import math
import re

import numpy as np

from geolift.errors import MetadataError

__all__ = ["guess_unit_factor", "unit_factor"]

_NM_UNITS = {"nm", "nanometer", "nanometers", "nanometre", "nanometres"}
_UM_UNITS = {"um", "micrometer", "micrometers", "micrometre", "micrometres", "micron", "microns", "mu"}
_MM_UNITS = {"mm", "millimeter", "millimeters", "millimetre", "millimetres"}
_NO_UNITS = {"", "unknown", "none", "n/a"}
_INDEX_UNITS = {"index", "band", "bands", "bandnumber"}

#: Above this, values without a unit cannot be micrometres: optical and thermal sensors end near 15 µm.
_MAX_MICROMETRES = 30.0
#: Below this, values without a unit cannot be nanometres (the shortest optical bands are near 400 nm).
_MIN_NANOMETRES = 100.0


def unit_factor(units: str | None, source: object = None) -> float | None:
    """Nanometres per ``units``; None when no unit is stated; NaN when the values are band numbers, not wavelengths.

    Case, white space, dots and the micro sign (µ or μ) do not matter. An unknown unit raises ``MetadataError``
    naming ``source`` (a file), so the user knows which file to fix.
    """
    if units is None:
        return None
    key = re.sub(r"[\s.]+", "", str(units).strip().lower().replace("µ", "u").replace("μ", "u"))
    if key in _NO_UNITS:
        return None
    if key in _NM_UNITS:
        return 1.0
    if key in _UM_UNITS:
        return 1000.0
    if key in _MM_UNITS:
        return 1.0e6
    if key in _INDEX_UNITS:
        return math.nan
    where = f"{source} gives" if source is not None else "Got"
    raise MetadataError(
        f"{where} wavelengths in unsupported units {units!r}; geolift needs nanometres or micrometres."
    )


def guess_unit_factor(values: np.ndarray, source: object = None) -> float:
    """Nanometres per unit of ``values`` that state no unit, from their magnitude.

    All values at most 30 are micrometres, all values of 100 or more are nanometres; anything in between is
    ambiguous and raises ``MetadataError`` asking for the unit.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    what = f"the wavelengths of {source}" if source is not None else "the wavelengths"
    if finite.size == 0:
        raise MetadataError(f"Cannot guess the unit of {what}: no finite value.")
    if finite.max() <= _MAX_MICROMETRES:
        return 1000.0
    if finite.min() >= _MIN_NANOMETRES:
        return 1.0
    raise MetadataError(
        f"Cannot tell whether {what} ({finite.min():g} - {finite.max():g}) are in nm or µm; state the unit."
    )
