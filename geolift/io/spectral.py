"""Spectral metadata: band wavelengths, FWHM and bad-band flags, wherever GDAL exposes them.

Files carry wavelengths in many places (band tags, ENVI header lists, dataset lists, GDAL's ``IMAGERY`` domain,
band descriptions such as ``"band 8 (0.460000 Micrometers)"``); :func:`spectral_metadata` takes the first that
gives a value for every band and converts it to nanometres with :mod:`geolift.units`. The order and the rules are
in :mod:`geolift.io`'s docstring.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geolift.errors import MetadataError, warn
from geolift.units import guess_unit_factor, unit_factor

__all__ = ["SpectralMetadata", "spectral_metadata"]

logger = logging.getLogger("geolift")

_DESC_WITH_UNIT = re.compile(
    r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*"
    r"(nanomet(?:er|re)s?|nm|micromet(?:er|re)s?|microns?|µm|μm|um)\b",
    re.IGNORECASE,
)


def _parse_list(text: str | None) -> list[str] | None:
    """Parse an ENVI-style ``{a, b, c}`` list (or a bare comma list)."""
    if text is None:
        return None
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    items = [s.strip() for s in inner.split(",")]
    items = [s for s in items if s]
    return items or None


def _floats(values: Sequence[str | None] | None, n: int) -> np.ndarray | None:
    """n floats, or None when any is missing or not a number."""
    if values is None or len(values) != n:
        return None
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


@dataclass
class SpectralMetadata:
    """What one file says about the spectra of some of its bands (None where it says nothing)."""

    wavelengths_nm: np.ndarray | None
    fwhm_nm: np.ndarray | None
    bbl: np.ndarray | None
    source: str | None


def _lower_keys(d: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in d.items()}


def _to_nm(values: np.ndarray, factors: list[float | None], path: Path) -> tuple[np.ndarray | None, str | None]:
    """Convert per-band values to nm; guess the unit from magnitude only if no band states one.

    Returns the values in nm (None for band indices) and the guessed unit, or None when no guess was made.
    """
    if any(f is not None and math.isnan(f) for f in factors):
        return None, None  # wavelength "units = Index": band numbers, not wavelengths
    known = [f for f in factors if f is not None]
    if known:  # bands without a unit take the unit of the first band that has one
        return values * np.array([f if f is not None else known[0] for f in factors]), None
    factor = guess_unit_factor(values, path)
    return values * factor, ("micrometres" if factor == 1000.0 else "nanometres")


def spectral_metadata(ds, path: Path, bands: Sequence[int]) -> SpectralMetadata:
    """Find wavelengths, FWHM and bad-band flags of ``bands`` (1-based) in all the places GDAL puts them."""
    n = len(bands)
    ds_tags = _lower_keys(ds.tags())
    envi = _lower_keys(ds.tags(ns="ENVI")) if "ENVI" in (ds.tag_namespaces() or []) else {}
    band_tags = [_lower_keys(ds.tags(b)) for b in bands]
    imagery = [
        _lower_keys(ds.tags(b, ns="IMAGERY")) if "IMAGERY" in (ds.tag_namespaces(b) or []) else {} for b in bands
    ]
    dataset_units = ds_tags.get("wavelength_units") or envi.get("wavelength_units")
    all_bands = list(range(1, ds.count + 1))

    def pick_list(values: list[str] | None) -> list[str] | None:
        """Dataset-wide lists describe every band of the file; keep the selected ones."""
        if values is None or len(values) != ds.count:
            return None
        return [values[all_bands.index(b)] for b in bands]

    # (name, wavelength values, per-band unit factors, fwhm values)
    candidates: list[tuple[str, np.ndarray | None, list[float | None], np.ndarray | None]] = []

    units_bt = [unit_factor(t.get("wavelength_units") or dataset_units, path) for t in band_tags]
    candidates.append(
        (
            "band metadata",
            _floats([t.get("wavelength") for t in band_tags], n),
            units_bt,
            _floats([t.get("fwhm") for t in band_tags], n),
        )
    )
    if envi:
        u = unit_factor(envi.get("wavelength_units") or dataset_units, path)
        candidates.append(
            (
                "ENVI header",
                _floats(pick_list(_parse_list(envi.get("wavelength"))), n),
                [u] * n,
                _floats(pick_list(_parse_list(envi.get("fwhm"))), n),
            )
        )
    if "wavelength" in ds_tags and "{" in ds_tags["wavelength"]:
        u = unit_factor(dataset_units, path)
        candidates.append(
            (
                "dataset metadata list",
                _floats(pick_list(_parse_list(ds_tags.get("wavelength"))), n),
                [u] * n,
                _floats(pick_list(_parse_list(ds_tags.get("fwhm"))), n),
            )
        )
    candidates.append(
        (
            "IMAGERY metadata",
            _floats([t.get("central_wavelength_um") for t in imagery], n),
            [1000.0] * n,
            _floats([t.get("fwhm_um") for t in imagery], n),
        )
    )
    desc_values: list[str | None] = []
    desc_units: list[float | None] = []
    for b in bands:
        desc = ds.descriptions[b - 1] or ""
        m = _DESC_WITH_UNIT.search(desc)  # a bare "(2)" is too often a counter, so a unit is required
        desc_values.append(m.group(1) if m else None)
        desc_units.append(unit_factor(m.group(2), path) if m else None)
    candidates.append(("band descriptions", _floats(desc_values, n), desc_units, None))

    wavelengths = fwhm = None
    source = guessed = None
    wavelength_factor = 1.0
    for name, values, factors, _ in candidates:
        if values is not None:
            wavelengths, guessed = _to_nm(values, factors, path)
            if wavelengths is not None:
                source = name
                known = [f for f in factors if f is not None]
                wavelength_factor = known[0] if known else (1000.0 if guessed == "micrometres" else 1.0)
                break
    if wavelengths is not None:
        # A FWHM without a unit takes the wavelengths' unit: its magnitude says nothing (10 nm vs 0.01 µm).
        for _, _, factors, values in candidates:
            if values is not None:
                fwhm, _ = _to_nm(values, [f if f is not None else wavelength_factor for f in factors], path)
                if fwhm is not None:
                    break
    if wavelengths is not None:
        if guessed:
            warn(f"{path} gives wavelengths without a unit; they were read as {guessed} from their magnitude.")
        if not np.all((wavelengths >= 100) & (wavelengths <= 100_000)):
            raise MetadataError(
                f"{path} has wavelengths outside 100 nm - 100 µm after unit conversion "
                f"({np.nanmin(wavelengths):g} - {np.nanmax(wavelengths):g} nm); check its wavelength units."
            )
        logger.debug("%s: wavelengths from %s", path, source)

    bbl = None
    bbl_values = _floats([t.get("bbl") for t in band_tags], n)
    if bbl_values is None and envi:
        bbl_values = _floats(pick_list(_parse_list(envi.get("bbl"))), n)
    if bbl_values is None and "bbl" in ds_tags:
        bbl_values = _floats(pick_list(_parse_list(ds_tags.get("bbl"))), n)
    if bbl_values is not None:
        bbl = bbl_values != 0
    return SpectralMetadata(wavelengths, fwhm, bbl, source)
