"""``geolift assess``: what quality to expect on this pair, measured on the pair itself before fusing an archive.

Wald's protocol at reduced scale: the LR-HSI is degraded by the pair's resolution ratio (the blur estimated from the
data as the consistency step does, then block averaging), the HR-MSI by area-averaging it onto the HSI grid (what
co-registration already does). The degraded pair is fused and compared with the real LR-HSI, which is the truth at
that scale: by geolift's default (the network and the consistency step), the faithful SpectraLift preset, and
bicubic interpolation. Metrics come from :mod:`geolift.evaluate`, for all bands and for the VNIR (< 1000 nm) and
SWIR bands apart. A reduced-scale figure tells the order of the methods and a rough level; the full-scale result is
usually somewhat better (more training pixels), and the reduced scene must keep enough pixels to train on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geolift import blur, evaluate, fuse
from geolift import refine as rf
from geolift.errors import InputError
from geolift.model import SpectraLift, torch_threads

__all__ = ["METHODS", "AssessArrays", "AssessReport", "assess", "write_figure"]

log = logging.getLogger("geolift")

METHODS = ("geolift", "spectralift", "bicubic")
#: Bands below this wavelength are the VNIR group, the others SWIR.
VNIR_END_NM = 1000.0
#: The degraded HSI must keep at least this many pixels, or the reduced-scale fit says nothing.
MIN_REDUCED_PIXELS = 36


@dataclass
class AssessReport:
    """What ``assess`` measured: per method, metrics for all bands and per band group."""

    hsi: str = ""
    msi: str = ""
    ratio: float = math.nan  # the pair's resolution ratio
    factor: int = 0  # the integer ratio the HSI was degraded by
    truth_shape: tuple[int, int] = (0, 0)  # the HSI window used as truth (rows, cols)
    reduced_shape: tuple[int, int] = (0, 0)
    psf: dict[str, Any] = field(default_factory=dict)
    pair_check: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # method -> group -> metric
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The metrics as a text table, one row per method."""
        groups = [g for g in ("VNIR", "SWIR") if any(g in m for m in self.metrics.values())]
        head = (f"{'method':<12} {'PSNR':>7} {'SAM':>6} {'ERGAS':>6} {'SSIM':>6}"
                + "".join(f" {'PSNR ' + g:>10} {'SAM ' + g:>9}" for g in groups))
        rows = [head]
        for method, by_group in self.metrics.items():
            a = by_group["all"]
            row = f"{method:<12} {a['PSNR']:7.2f} {a['SAM']:6.2f} {a['ERGAS']:6.2f} {a['SSIM']:6.3f}"
            row += "".join(f" {by_group[g]['PSNR']:10.2f} {by_group[g]['SAM']:9.2f}" for g in groups)
            rows.append(row)
        return "\n".join(rows)


@dataclass
class AssessArrays:
    """The arrays behind the report (scaled to the truth's maximum), for a figure."""

    truth: np.ndarray
    predictions: dict[str, np.ndarray]
    wavelengths_nm: np.ndarray


def assess(hsi_source, msi_source, options: fuse.FuseOptions | None = None,
           progress: fuse.Progress | None = None) -> tuple[AssessReport, AssessArrays]:
    """Run the reduced-scale check on a pair (see the module docstring); ``options`` as for ``geolift fuse``."""
    started = time.perf_counter()
    options = options or fuse.FuseOptions()
    pair = fuse.observe_pair(hsi_source, msi_source, options, progress)
    report = AssessReport(hsi=str(pair.hsi.path), msi=str(pair.msi.path), ratio=pair.report.resolution_ratio,
                          pair_check=pair.report.pair_check)
    factor = max(2, int(round(report.ratio)))
    plan = fuse.FusionPlan(hsi=pair.hsi, msi=pair.msi, msi_band_indices=pair.band_indices,
                           response=pair.response.matrix, hsi_grid=pair.hsi_grid, hsi_valid=pair.hsi_valid,
                           output=pair.output, model=None, agreement=None, report=pair.report, options=options)
    psf = fuse.estimate_blur(plan, pair.lr_hsi)
    report.factor, report.psf = factor, {"family": psf.family, "fwhm_px": psf.fwhm, "misfit": psf.residual}
    # The same blur relative to the pixel it blurs into: width in HSI pixels is width in MSI pixels x factor / ratio.
    # A free-form kernel is carried over as the Gaussian of its second moment (its taps are on the MSI grid).
    family = "gaussian" if psf.family == "free" else psf.family
    width = psf.width if math.isfinite(psf.width) else 0.5 * report.ratio
    if psf.family == "free":
        log.info("Assess: the free-form blur kernel is simulated at the reduced scale as a Gaussian of FWHM %.2f "
                 "output px.", 2.0 * math.sqrt(2.0 * math.log(2.0)) * width)
    reduced_psf = blur.PSFEstimate(family, width * factor / report.ratio, psf.beta, "nearest")

    truth, msi = _valid_crop(pair.lr_hsi, pair.observed, pair.hsi_valid, factor)
    rows, cols = truth.shape[1:]
    report.truth_shape, report.reduced_shape = (rows, cols), (rows // factor, cols // factor)
    if report.reduced_shape[0] * report.reduced_shape[1] < MIN_REDUCED_PIXELS:
        raise InputError(f"The HSI's valid area ({rows} x {cols} px) degraded by the ratio {factor} leaves "
                         f"{report.reduced_shape[0]} x {report.reduced_shape[1]} px, too few to train on; "
                         "assess needs a larger scene.")
    scale = float(np.nanmax(truth)) or 1.0
    truth, msi = truth / scale, msi / scale
    lr = rf.degrade(truth, blur.GridPair.aligned(report.reduced_shape, factor), reduced_psf).astype(np.float32)
    log.info("Assess: truth %d x %d HSI px, degraded by %d to %d x %d px (blur FWHM %.2f HSI px).", rows, cols,
             factor, *report.reduced_shape, reduced_psf.fwhm)

    R = pair.response.matrix
    predictions = {}
    for method in METHODS:
        if method == "bicubic":
            predictions[method] = evaluate.bicubic_upsample(lr, (rows, cols))
            continue
        model = SpectraLift(preset=method, seed=options.seed, device=options.device, **fuse.model_overrides(options))
        with torch_threads(options.torch_threads):
            predictions[method] = model.fit(lr, R).predict(msi, ratio=factor)  # with the recipe's consistency step
        log.info("Assess: %s fused.", method)
    wavelengths = pair.hsi.wavelengths_nm[pair.hsi.good_bands]
    groups = {"all": np.ones(wavelengths.size, bool), "VNIR": wavelengths < VNIR_END_NM,
              "SWIR": wavelengths >= VNIR_END_NM}
    for method, prediction in predictions.items():
        report.metrics[method] = {
            name: _metrics(truth[mask], prediction[mask], factor) for name, mask in groups.items()
            if mask.sum() >= 2 and (name == "all" or not mask.all())
        }
    report.seconds = time.perf_counter() - started
    return report, AssessArrays(truth, predictions, wavelengths)


def _metrics(truth: np.ndarray, prediction: np.ndarray, factor: int) -> dict[str, float]:
    return {k: float(v) for k, v in evaluate.all_metrics(truth, prediction, factor).items()}


def _valid_crop(lr_hsi: np.ndarray, observed: np.ndarray, valid: np.ndarray,
                factor: int) -> tuple[np.ndarray, np.ndarray]:
    """HSI (the truth) and aggregated MSI on a rectangle where both have data everywhere, cut to a multiple of
    ``factor``: the scene's edges (an HSI pixel the MSI covers only in part) are trimmed row or column at a time,
    the one with most missing pixels first."""
    valid = valid & np.isfinite(observed).all(axis=0) & np.isfinite(lr_hsi).all(axis=0)
    r0, r1, c0, c1 = 0, valid.shape[0], 0, valid.shape[1]
    while r1 > r0 and c1 > c0 and not valid[r0:r1, c0:c1].all():
        box = valid[r0:r1, c0:c1]
        missing = {"top": (~box[0]).sum(), "bottom": (~box[-1]).sum(), "left": (~box[:, 0]).sum(),
                   "right": (~box[:, -1]).sum()}
        side = max(missing, key=lambda k: missing[k] / (box.shape[1] if k in ("top", "bottom") else box.shape[0]))
        r0, r1 = r0 + (side == "top"), r1 - (side == "bottom")
        c0, c1 = c0 + (side == "left"), c1 - (side == "right")
    height, width = (r1 - r0) // factor * factor, (c1 - c0) // factor * factor
    if height <= 0 or width <= 0:
        raise InputError("The two scenes share no rectangle of valid pixels to assess on.")
    window = (slice(None), slice(r0, r0 + height), slice(c0, c0 + width))
    return lr_hsi[window].astype(np.float32), observed[window].astype(np.float32)


def write_figure(arrays: AssessArrays, report: AssessReport, path: str | Path) -> Path:
    """A PNG: geolift's spectral-angle error map and the spectra of three pixels (truth and each method)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("The figure needs matplotlib: pip install 'geolift[plot]'.") from None
    truth, fused = arrays.truth, arrays.predictions["geolift"]
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (truth * fused).sum(0) / (np.linalg.norm(truth, axis=0) * np.linalg.norm(fused, axis=0))
    angle = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    shown = left.imshow(angle, cmap="magma")
    fig.colorbar(shown, ax=left, label="spectral angle (degrees)")
    left.set_title(f"geolift at reduced scale (ratio {report.factor}): error per pixel", fontsize=10)
    left.set_xticks([])
    left.set_yticks([])
    order = np.argsort(arrays.wavelengths_nm)
    flat = np.nan_to_num(angle, nan=-1).ravel()
    picks = [int(np.argmin(np.abs(flat - np.percentile(angle, q)))) for q in (10, 50, 90)]
    styles = {"geolift": "-", "spectralift": "--", "bicubic": ":"}
    for k, pick in enumerate(picks):
        r, c = divmod(pick, angle.shape[1])
        left.plot(c, r, "o", mfc="none", mec=f"C{k}")
        right.plot(arrays.wavelengths_nm[order], truth[order, r, c], color=f"C{k}", lw=2, alpha=0.4)
        for method, style in styles.items():
            right.plot(arrays.wavelengths_nm[order], arrays.predictions[method][order, r, c], style, color=f"C{k}",
                       lw=1, label=method if k == 0 else None)
    right.set_xlabel("wavelength (nm)")
    right.set_ylabel("reflectance (scaled)")
    right.set_title("spectra: truth (thick), methods (thin)", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
