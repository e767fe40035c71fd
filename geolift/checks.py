"""Is this a consistent pair? A verdict from what co-registration already measures, before any training.

The HR-MSI, area-averaged onto the HSI grid (``observed``), must look like the MSI response applied to the LR-HSI
(``synthetic``). Four figures say how far it does, each tied to the likely cause when it does not:

* **band correlation** ``r`` per band: low or negative when the bands are not what geolift was told (wrong order,
  wrong sensor, wrong ``--bands``);
* **band gain** (``synthetic ≈ gain · observed + offset``): far from 1 when the two scenes use other units or
  scalings (reflectance 0-1 against reflectance × 10000, radiance against reflectance);
* **LR residual**, the relative RMS of ``synthetic - observed`` after that gain and offset: high when something
  differs locally (clouds or their shadows in one scene, a different date, snow);
* **shift peak**, the phase-correlation peak of the co-registration: low when the two scenes do not show the same
  content (another place or date, heavy clouds).

The thresholds come from pairs that are known to be good and the same pairs broken on purpose
(``benchmarks/pair_checks.py``; the table is in ``docs/benchmarks.md``): good pairs had every band r >= 0.92, gains
0.76-0.98, LR residual <= 12.4 % and peak 0.99; clouds, another place, the wrong bands or their order gave r <= 0.41
(and residual >= 18.7 %), other units a gain of 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["MAX_GAIN", "MAX_LR_RESIDUAL", "MIN_BAND_CORRELATION", "MIN_GAIN", "MIN_SHIFT_PEAK", "PairCheck",
           "check_pair"]

#: A band whose correlation with its synthetic twin is below this is not the band geolift was told it is.
MIN_BAND_CORRELATION = 0.8
#: Band gains outside this range mean other units or scalings.
MIN_GAIN, MAX_GAIN = 0.5, 2.0
#: Relative RMS of the LR residual (after each band's gain and offset) above which the scenes differ locally.
MAX_LR_RESIDUAL = 0.18
#: A co-registration peak below this means the scenes do not show the same content.
MIN_SHIFT_PEAK = 0.5
#: The figures are measured on both cubes smoothed over this many LR pixels (see :func:`band_figures`).
SMOOTHING_PX = 3


@dataclass
class PairCheck:
    """The verdict on a pair: ``consistent``, and when not, one sentence per likely cause; plus the figures."""

    consistent: bool
    causes: list[str] = field(default_factory=list)
    min_correlation: float = math.nan
    gain_range: tuple[float, float] = (math.nan, math.nan)
    lr_residual: float = math.nan
    shift_peak: float = math.nan
    note: str = ""  # why the pair could not be checked, when it could not

    @property
    def verdict(self) -> str:
        return "consistent" if self.consistent else "inconsistent"

    def summary(self) -> str:
        """One line for logs and reports: the figures, and the causes when inconsistent."""
        low, high = self.gain_range
        figures = (f"lowest band r {self.min_correlation:.2f}, gains {low:.3g}-{high:.3g}, "
                   f"LR residual {100 * self.lr_residual:.1f} %, shift peak {self.shift_peak:.2f}")
        if self.note:
            return f"the pair could not be checked ({self.note})"
        if self.consistent:
            return f"the pair looks consistent ({figures})"
        return f"the pair looks inconsistent ({figures}): {' '.join(self.causes)}"

    def to_dict(self) -> dict:
        return asdict(self) | {"verdict": self.verdict}


def _smooth(cube: np.ndarray, size: int) -> np.ndarray:
    """NaN-aware ``size`` x ``size`` box mean per band (NaN where the box holds no valid pixel)."""
    valid = np.isfinite(cube)
    sums = ndimage.uniform_filter(np.where(valid, cube, 0.0).astype(np.float64), size=(1, size, size), mode="nearest")
    counts = ndimage.uniform_filter(valid.astype(np.float64), size=(1, size, size), mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0.5 / size**2, sums / counts, np.nan)


def band_figures(observed: np.ndarray, synthetic: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-band correlation and gain of ``synthetic ≈ gain · observed + offset``, and the relative RMS residual,
    on both cubes smoothed over :data:`SMOOTHING_PX` LR pixels: the two are blurred differently (the HSI by its
    sensor's PSF, the aggregated MSI hardly at all), and that difference, which is no inconsistency, fades there."""
    obs, syn = _smooth(observed, SMOOTHING_PX), _smooth(synthetic, SMOOTHING_PX)
    valid = np.isfinite(obs).all(axis=0) & np.isfinite(syn).all(axis=0)
    m = obs.shape[0]
    if valid.sum() < 10:
        return np.full(m, np.nan), np.full(m, np.nan), math.nan
    o, y = obs[:, valid], syn[:, valid]
    do, dy = o - o.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    var_o = (do * do).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = (do * dy).sum(axis=1) / var_o
        correlation = (do * dy).sum(axis=1) / np.sqrt(var_o * (dy * dy).sum(axis=1))
    fitted = np.nan_to_num(gain)[:, None] * do + y.mean(axis=1, keepdims=True)
    scale = float(np.mean(np.abs(y)))
    residual = float(np.sqrt(np.mean((y - fitted) ** 2)) / scale) if scale > 0 else math.nan
    return correlation, gain, residual


def check_pair(bands: Sequence[str], observed: np.ndarray, synthetic: np.ndarray,
               shift_peak: float = math.nan) -> PairCheck:
    """The verdict for MSI ``bands``, from the aggregated HR-MSI and the synthetic LR-MSI ``(m, h, w)``."""
    correlation, gain, residual = band_figures(observed, synthetic)
    if not np.isfinite(correlation).any():
        return PairCheck(consistent=True, shift_peak=float(shift_peak),
                         note="too few pixels valid in both scenes to measure their agreement")
    causes = []
    poor = [i for i, r in enumerate(correlation) if not r >= MIN_BAND_CORRELATION]
    if poor:
        listing = ", ".join(f"{bands[i]} (r {correlation[i]:.2f})" for i in poor)
        causes.append(f"MSI band(s) {listing} do not match what the HSI predicts for them: the bands are probably in "
                      "another order or not the ones named (check --bands and --sensor).")
    off = [i for i, g in enumerate(gain) if not MIN_GAIN <= g <= MAX_GAIN]
    if off and len(poor) < len(bands):
        listing = ", ".join(f"{bands[i]} ({gain[i]:.3g})" for i in off)
        causes.append(f"MSI values are far from the HSI's (gain {listing}): other units or scalings (e.g. "
                      "reflectance 0-1 against x 10000); --harmonize maps the MSI onto the HSI's radiometry.")
    if residual > MAX_LR_RESIDUAL and not poor:
        causes.append(f"the scenes differ locally ({100 * residual:.0f} % residual after per-band gains): clouds, "
                      "shadows, snow or a different date in one of them.")
    if shift_peak < MIN_SHIFT_PEAK:
        causes.append(f"co-registration finds little common content (peak {shift_peak:.2f}): another place or date, "
                      "or heavy clouds.")
    finite_gain = gain[np.isfinite(gain)]
    return PairCheck(
        consistent=not causes, causes=causes,
        min_correlation=float(np.nanmin(correlation)) if np.isfinite(correlation).any() else math.nan,
        gain_range=(float(finite_gain.min()), float(finite_gain.max())) if finite_gain.size else (math.nan, math.nan),
        lr_residual=float(residual), shift_peak=float(shift_peak),
    )
