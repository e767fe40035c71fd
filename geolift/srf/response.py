"""The MSI-from-HSI response matrix ``R`` for any hyperspectral band set.

How ``R`` is built (see :func:`build_response`)
-------------------------------------------------
Each hyperspectral band ``c`` is modelled as a Gaussian response ``G_c`` centred on its
wavelength with its FWHM.  When no FWHM is known, the FWHM is taken as the local band
spacing: the median of the (up to four) centre-to-centre steps around the band, which is
what a contiguously sampled imaging spectrometer has (FWHM ~ spacing) and which stays
sensible next to gaps and in overlapping detector regions.  At every wavelength the
shares ``u_c = G_c / sum_k G_k`` split the spectrum among the HSI bands (a partition of
unity, so unevenly spaced or overlapping bands are not counted twice), and

    R[i, c] = integral(S_i * u_c over covered wavelengths) / integral(S_i over covered wavelengths)

for MSI band response ``S_i``.  Rows therefore sum to 1 and a spectrum that is linear in
wavelength maps to its value at the band's response-weighted centroid.

Coverage rule
-------------
The HSI's spectral coverage is the union of (a) each HSI band's half-maximum interval
``[centre - FWHM/2, centre + FWHM/2]`` and (b) the span between neighbouring centres,
unless that step is larger than ``GAP_FACTOR`` (2.5) times the larger of the two FWHMs
(a gap, e.g. removed water-vapour bands).  An MSI band is covered when at least
``FULL_COVERAGE`` (95 %) of its response integral lies inside the coverage. A band covered
at least ``MIN_COVERAGE`` (50 %, from Wald cases: benchmarks/partial_coverage.py) but less is
used with its response truncated to the covered part (the formula above integrates over
covered wavelengths only, so the row is renormalised), with one :class:`GeoliftWarning`
naming it. A band covered less raises :class:`SpectralCoverageError` naming the band and
both ranges, or is dropped with a warning when ``drop_uncovered=True``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from geolift.errors import MetadataError, SensorError, SpectralCoverageError, warn
from geolift.srf.curves import _FOUR_LN2, SensorLike, _as_srfset, _unit_factor

__all__ = ["FULL_COVERAGE", "GAP_FACTOR", "MIN_COVERAGE", "SpectralResponse", "build_response", "response_matrix"]

log = logging.getLogger("geolift")

#: A step between neighbouring HSI band centres wider than this many FWHMs is a gap.
GAP_FACTOR = 2.5
#: Share of an MSI band's response integral that must lie inside the HSI coverage for the band to be used at all
#: (measured on Wald cases: benchmarks/partial_coverage.py, docs/benchmarks.md).
MIN_COVERAGE = 0.5
#: From this share on a band counts as covered; below it (down to MIN_COVERAGE) it is used with its response
#: truncated to the covered part and renormalised, and a warning names it.
FULL_COVERAGE = 0.95


# --------------------------------------------------------------------------- response matrix


@dataclass(eq=False)
class SpectralResponse:
    """An MSI-from-HSI response matrix and what went into it.

    ``matrix`` is (m, C) float32 with rows summing to 1 (``msi = matrix @ hsi``);
    ``bands`` are the kept MSI band names (row order), ``dropped`` those not covered;
    ``coverage`` is the covered share of each requested band's response.
    """

    matrix: np.ndarray
    bands: list[str]
    dropped: list[str]
    sensor: str
    coverage: dict[str, float]
    hsi_wavelength_nm: np.ndarray
    hsi_fwhm_nm: np.ndarray
    fwhm_estimated: bool
    covered_ranges_nm: list[tuple[float, float]]


def _validate_hsi(
    wavelengths, fwhm, units: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size == 0:
        raise MetadataError(f"HSI wavelengths must be a 1-D list of band centres, got shape {wl.shape}.")
    if not np.all(np.isfinite(wl)):
        bad = int(np.flatnonzero(~np.isfinite(wl))[0])
        raise MetadataError(f"HSI wavelength of band {bad + 1} is not a finite number.")
    factor = _unit_factor(wl, units)
    wl = wl * factor
    if wl.min() <= 0:
        raise MetadataError("HSI wavelengths must be positive.")
    if wl.size > 1:
        # Any order is fine (EnMAP's VNIR and SWIR detectors overlap, so file order is not
        # wavelength order); two bands at the same centre are not.
        ranked = np.sort(wl)
        same = np.flatnonzero(np.diff(ranked) == 0)
        if same.size:
            dup = ranked[same[0]]
            first, second = (int(i) + 1 for i in np.flatnonzero(wl == dup)[:2])
            raise MetadataError(
                f"HSI wavelengths must be distinct: band {second} ({dup:g} nm) repeats band {first}."
            )
    if fwhm is None:
        if wl.size < 2:
            raise MetadataError("A single HSI band needs its FWHM to build a response matrix.")
        return wl, None
    fw = np.asarray(fwhm, dtype=np.float64)
    if fw.ndim == 0:
        fw = np.full(wl.shape, float(fw))
    if fw.shape != wl.shape:
        raise MetadataError(
            f"Got {wl.size} HSI wavelengths but {fw.size} FWHM values; they must match one to one."
        )
    if not (np.all(np.isfinite(fw)) and np.all(fw > 0)):
        raise MetadataError("HSI FWHM values must be finite and positive.")
    fw = fw * factor
    if fw.max() > 1000.0 or fw.min() < 0.01:
        raise MetadataError(
            f"HSI FWHM values of {fw.min():g}-{fw.max():g} nm are implausible; FWHM must be in the "
            f"same units as the wavelengths."
        )
    return wl, fw


def _local_spacing(sorted_wl: np.ndarray) -> np.ndarray:
    """FWHM stand-in: median of the up to four centre steps around each band."""
    steps = np.diff(sorted_wl)
    widths = np.empty_like(sorted_wl)
    for k in range(sorted_wl.size):
        widths[k] = np.median(steps[max(0, k - 2): k + 2])
    return widths


def _coverage_intervals(centres: np.ndarray, widths: np.ndarray) -> list[tuple[float, float]]:
    """Union of half-maximum intervals and non-gap spans between neighbours (sorted input)."""
    spans = [(c - w / 2.0, c + w / 2.0) for c, w in zip(centres, widths)]
    for k in range(centres.size - 1):
        if centres[k + 1] - centres[k] <= GAP_FACTOR * max(widths[k], widths[k + 1]):
            spans.append((centres[k], centres[k + 1]))
    spans.sort()
    merged = [list(spans[0])]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(float(lo), float(hi)) for lo, hi in merged]


def _trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    steps = np.diff(grid)
    weights = np.zeros_like(grid)
    weights[:-1] += steps / 2.0
    weights[1:] += steps / 2.0
    return weights


def _format_ranges(ranges: list[tuple[float, float]]) -> str:
    return ", ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in ranges) + " nm"


def build_response(
    sensor_or_srfset: SensorLike,
    band_names: str | Iterable[str] | None,
    wavelengths,
    fwhm_nm=None,
    units: str | None = None,
    drop_uncovered: bool = False,
    min_coverage: float = MIN_COVERAGE,
) -> SpectralResponse:
    """Response matrix mapping HSI spectra to the named MSI bands, with coverage checks.

    ``sensor_or_srfset``: a bundled sensor name, a path to a custom SRF CSV, or an
    :class:`SRFSet`.  ``band_names``: MSI bands in any accepted spelling (None = all).
    ``wavelengths``: HSI band centres, distinct, in any order, in ``units`` (guessed when
    None, see :func:`to_nm`).  ``fwhm_nm``: HSI FWHM per band (or one value) in the same
    units as ``wavelengths``; None estimates it from the band spacing (module docstring).
    Uncovered bands (less than ``min_coverage`` of their response inside the HSI
    coverage) raise SpectralCoverageError, or are dropped with a GeoliftWarning when
    ``drop_uncovered`` is true.  Columns follow the order of ``wavelengths``.
    """
    if not 0.0 < min_coverage <= 1.0:
        raise SensorError(f"min_coverage must lie in (0, 1], got {min_coverage}.")
    srf = _as_srfset(sensor_or_srfset).select(band_names)
    wl, fwhm = _validate_hsi(wavelengths, fwhm_nm, units)
    order = np.argsort(wl)
    centres = wl[order]
    estimated = fwhm is None
    widths = _local_spacing(centres) if estimated else fwhm[order]
    covered = _coverage_intervals(centres, widths)

    # Integrate on a grid fine enough for both the SRF samples and the narrowest HSI band.
    support = np.flatnonzero(srf.curves.max(axis=0) > 0)
    lo = srf.wavelength_nm[max(support[0] - 1, 0)]
    hi = srf.wavelength_nm[min(support[-1] + 1, srf.wavelength_nm.size - 1)]
    step = max(min(1.0, float(widths.min()) / 4.0), (hi - lo) / 200_000)
    grid = np.linspace(lo, hi, int(math.ceil((hi - lo) / step)) + 1)
    responses = np.array([np.interp(grid, srf.wavelength_nm, c, left=0.0, right=0.0) for c in srf.curves])
    weights = _trapezoid_weights(grid)
    inside = np.zeros(grid.shape, dtype=bool)
    for a, b in covered:
        inside |= (grid >= a) & (grid <= b)
    total = responses @ weights
    fractions = (responses @ (weights * inside)) / total

    coverage = {b: float(f) for b, f in zip(srf.band_names, fractions)}
    keep = fractions >= min_coverage
    dropped = [b for b, k in zip(srf.band_names, keep) if not k]
    if dropped:
        ranges = srf.half_max_ranges_nm()
        details = [
            f"{b} (half-maximum {ranges[i, 0]:.0f}-{ranges[i, 1]:.0f} nm, {fractions[i]:.0%} covered)"
            for i, b in enumerate(srf.band_names)
            if not keep[i]
        ]
        span = _format_ranges(covered)
        if not drop_uncovered:
            raise SpectralCoverageError(
                f"{srf.display_name} {'band' if len(details) == 1 else 'bands'} {'; '.join(details)} "
                f"{'is' if len(details) == 1 else 'are'} not covered by the "
                f"hyperspectral bands, which span {span} (at least {min_coverage:.0%} of a band's "
                f"response must lie inside); leave the band out (--bands) or drop it with --drop-uncovered "
                f"(drop_uncovered=True in Python)."
            )
        if not keep.any():
            raise SpectralCoverageError(
                f"None of the requested {srf.display_name} bands is covered by the hyperspectral "
                f"bands, which span {span}: {'; '.join(details)}."
            )
        message = (
            f"Dropped {srf.display_name} band(s) {'; '.join(details)}: not covered by the "
            f"hyperspectral bands, which span {span}."
        )
        warn(message)

    partial = [i for i in range(len(srf.band_names)) if keep[i] and fractions[i] < FULL_COVERAGE]
    if partial:
        ranges = srf.half_max_ranges_nm()
        details = "; ".join(f"{srf.band_names[i]} ({fractions[i]:.0%} covered, half-maximum "
                            f"{ranges[i, 0]:.0f}-{ranges[i, 1]:.0f} nm)" for i in partial)
        warn(
            f"{srf.display_name} {'band' if len(partial) == 1 else 'bands'} {details} "
            f"{'lies' if len(partial) == 1 else 'lie'} partly outside the hyperspectral range "
            f"({_format_ranges(covered)}); only the covered part of the response is used, renormalised."
        )

    kept = responses[keep] * (weights * inside)
    matrix_sorted = np.zeros((kept.shape[0], centres.size))
    chunk = max(1, 4_000_000 // centres.size)
    for start in range(0, grid.size, chunk):
        part = slice(start, start + chunk)
        if not kept[:, part].any():
            continue
        z = (grid[part, None] - centres[None, :]) / widths[None, :]
        gauss = np.exp(-_FOUR_LN2 * z * z)
        norm = gauss.sum(axis=1, keepdims=True)
        shares = np.divide(gauss, norm, out=np.zeros_like(gauss), where=norm > 0)
        matrix_sorted += kept[:, part] @ shares
    matrix_sorted /= matrix_sorted.sum(axis=1, keepdims=True)
    matrix = np.empty_like(matrix_sorted)
    matrix[:, order] = matrix_sorted
    fwhm_out = np.empty_like(widths)
    fwhm_out[order] = widths
    log.debug(
        "Response matrix %s x %d HSI bands for %s (FWHM %s), coverage %s",
        len(keep) - len(dropped), centres.size, srf.display_name,
        "estimated from spacing" if estimated else "given", _format_ranges(covered),
    )
    return SpectralResponse(
        matrix=matrix.astype(np.float32),
        bands=[b for b, k in zip(srf.band_names, keep) if k],
        dropped=dropped,
        sensor=srf.name,
        coverage=coverage,
        hsi_wavelength_nm=wl,
        hsi_fwhm_nm=fwhm_out,
        fwhm_estimated=estimated,
        covered_ranges_nm=covered,
    )


def response_matrix(
    sensor_or_srfset: SensorLike,
    band_names: str | Iterable[str] | None,
    wavelengths,
    fwhm_nm=None,
    units: str | None = None,
) -> np.ndarray:
    """The (m, C) float32 response matrix (rows sum to 1); uncovered bands raise.

    ``response_matrix("sentinel2", ["B2", "B3", "B4", "B8"], wavelengths_nm)``.
    See :func:`build_response` for the arguments and the coverage rule.
    """
    return build_response(sensor_or_srfset, band_names, wavelengths, fwhm_nm=fwhm_nm, units=units).matrix
