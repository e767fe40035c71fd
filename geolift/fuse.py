"""The fusion pipeline: read → align → fit → stream predict → write.

:func:`fuse_files` is the one call a script (or the CLI, the batch runner, the QGIS plugin)
needs: two scenes in, one tiled, georeferenced HR-HSI GeoTIFF out. It is built from two
steps that the batch runner also uses separately, so a scene can be trained once and
predicted tile by tile on several workers:

* :func:`prepare_fusion` reads both scenes, picks the MSI sensor's response, finds the
  common area, estimates and corrects the residual misregistration, measures the
  radiometric agreement and fits the model. It returns a picklable :class:`FusionPlan`.
* :meth:`FusionPlan.predict_window` turns one window of the output grid into a block of
  the HR-HSI (every HSI band, NaN where any input is nodata or the band is bad);
  :func:`write_fusion` streams those blocks into the GeoTIFF, so memory stays bounded
  however large the scene.

Training stays as SpectraLift defines it (synthetic LR-MSI from the LR-HSI → LR-HSI) and
never resamples the HR-MSI; the HR-MSI is only area-averaged onto the HSI grid to check the
co-registration and the radiometry against the synthetic LR-MSI.

When the model's recipe asks for it (``model.consistency``, the default ``geolift`` preset),
:func:`prepare_fusion` also runs pass 1 of :mod:`geolift.refine`'s consistency step: it estimates
the blur from the data, predicts every output window once (on every core the job may use, see
:func:`prediction_workers`) to collect the network's output degraded to the HSI grid - reduced
at once to its coefficients on the LR-HSI's leading spectral components, so only those maps are
blurred and kept - and solves the low-resolution correction. The correction (LR-sized,
picklable) travels in the plan, and :meth:`FusionPlan.predict_window` adds it to each window
(pass 2). It runs after the shift correction, since it compares the two scenes pixel by pixel.
Pass 1 reads fixed windows (:data:`REFINE_WINDOW`) and every per-pixel step is exact, so the output
is the same bits for every tile size and however ``geolift batch`` splits the scene.

Writing overlaps computing: a worker thread predicts the next window while the main thread
encodes and writes the current one (torch and GDAL release the GIL), one window ahead
(:func:`pipelined`), so at most three blocks are alive at a time. The per-block arithmetic runs
in torch on its configured threads; numpy's BLAS would start a thread pool of its own that
competes with GDAL's compression threads for the same cores.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window, from_bounds

from geolift import align as coreg
from geolift import blur, checks, qa, srf
from geolift import refine as rf
from geolift.bands import msi_product_choices, msi_response_curves
from geolift.errors import (
    AlignmentError,
    InconsistentPairError,
    InputError,
    ModelError,
    OutputError,
    warn,
)
from geolift.grid import Grid
from geolift.io import Encoding, HSIWriter, OutputBands, Scene, check_output_path, open_scene
from geolift.io.products.common import product_identity
from geolift.model import DEFAULT_PRESET, SpectraLift, distillation_stride, torch_threads
from geolift.pipeline import pipelined
from geolift.scratch import NetworkScratch, scratch_prefix

log = logging.getLogger("geolift")

Progress = Callable[[int, int, str], None]
PathLike = str | Path

#: HSI rows aggregated at a time when the HR-MSI is averaged onto the HSI grid (bounds memory).
AGGREGATION_STRIP_ROWS = 32

#: The consistency step's windows (:mod:`geolift.refine`, shared with the library's in-memory form).
PSF_WINDOW, REFINE_STRIP_ROWS, REFINE_WINDOW = rf.PSF_WINDOW, rf.REFINE_STRIP_ROWS, rf.REFINE_WINDOW


@dataclass(frozen=True)
class FuseOptions:
    """Everything a user can choose for one fusion; the defaults suit most scenes."""

    sensor: str | None = None  # SRF library name; None: --srf or the MSI's own wavelength/FWHM metadata
    bands: tuple[str, ...] | None = None  # which sensor bands the MSI holds, in file order
    srf_path: str | None = None  # custom SRF CSV
    drop_uncovered: bool = False  # drop MSI bands the HSI range does not cover (else an error)
    overlap: str = "keep"  # a two-detector HSI product's overlap bands: "keep" both, or only "vnir" or "swir"
    resolution: float | None = None  # the MSI grid's pixel size (e.g. 20 for Sentinel-2's 20 m); None: its finest
    preset: str = DEFAULT_PRESET  # "geolift" (sampled training + consistency step); "spectralift": the paper's
    steps: int | None = None  # None: the preset's
    members: int | None = None  # networks trained side by side (then their student); None: the preset's (3 for geolift)
    seed: int = 0
    device: str = "cpu"
    align: bool = True  # estimate and correct the residual shift
    shift_threshold_px: float = coreg.SHIFT_THRESHOLD_PX
    harmonize: bool = False  # map HR-MSI values to the HSI's radiometry before inference
    dtype: str | None = None  # "float32" | "int16"; None: int16 for integer HSIs, else float32
    compress: str = "deflate"
    tile_size: int = 512
    cog: bool = False  # write a Cloud-Optimized GeoTIFF (overviews, COG layout; GDAL's COG driver)
    creation_options: tuple[str, ...] = ()  # GDAL creation options "NAME=VALUE" over geolift's (--co)
    num_threads: int = 2  # GDAL compression threads
    torch_threads: int | None = None  # torch threads for training and inference; None: leave torch's setting
    overwrite: bool = False
    strict: bool = False  # refuse an inconsistent pair (geolift.checks) instead of warning
    scratch: str = "auto"  # where fuse_files keeps pass 1's network output for pass 2: "auto" (beside the output),
    # a folder, or "none" (predict twice); see geolift.scratch

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class FuseReport:
    """What a fusion did, for the log, the output metadata and ``--report``."""

    output: str | None = None
    hsi: list[str] = field(default_factory=list)
    msi: list[str] = field(default_factory=list)
    hsi_crs: str = ""
    msi_crs: str = ""
    resolution_ratio: float = math.nan
    output_size: tuple[int, int] = (0, 0)  # (width, height) on the HR-MSI grid
    output_bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    msi_window: tuple[int, int, int, int] = (0, 0, 0, 0)  # col_off, row_off, width, height in the HR-MSI
    srf: str = ""
    msi_bands: list[str] = field(default_factory=list)
    dropped_bands: list[str] = field(default_factory=list)
    hsi_bands: int = 0
    bad_bands: int = 0
    shift_px: tuple[float, float] = (0.0, 0.0)  # (dy, dx) in HSI pixels, as estimated
    shift_m: tuple[float, float] = (0.0, 0.0)
    shift_peak: float = math.nan
    shift_applied: bool = False
    band_agreement: list[dict[str, Any]] = field(default_factory=list)
    pair_check: dict[str, Any] = field(default_factory=dict)  # geolift.checks: the verdict, its causes and figures
    hsi_product: dict[str, str] = field(default_factory=dict)  # a product's name, sensor, level, acquisition time
    hsi_masked_pixels: dict[str, int] = field(default_factory=dict)  # pixels each of its quality masks flags
    msi_product: dict[str, str] = field(default_factory=dict)  # the same for an MSI product
    msi_masked_pixels: dict[str, int] = field(default_factory=dict)
    days_apart: float | None = None  # between the two acquisitions, when both products give their times
    harmonized: bool = False
    output_range: tuple[float, float] | None = None  # what predictions are clipped to, in the HSI's units
    training_pixels: int = 0
    student_pixels: int = 0  # HR-MSI pixels the ensemble's student network learned from (0: no student)
    train_seconds: float = 0.0
    write_seconds: float = 0.0
    write_cpu_seconds: float = 0.0  # CPU time of all the process's threads (GDAL's too) over write_seconds
    srf_consistency_rmse: float = math.nan
    srf_consistency_relative: float = math.nan  # RMSE / mean HR-MSI value
    refined: bool = False  # whether the LR-consistency step (geolift.refine) was applied
    refine_note: str = ""  # why it was not, when the recipe asked for it
    psf: dict[str, Any] = field(default_factory=dict)  # the blur estimated from the data (HR pixels)
    refine_regularization: float = math.nan
    refine_residual_before: float = math.nan  # RMS of the projected LR residual, before and after the correction
    refine_residual_after: float = math.nan
    refine_seconds: float = 0.0  # PSF fit + pass 1 (one extra prediction of every window) + LR solve
    refine_cpu_seconds: float = 0.0  # CPU time of all the process's threads over refine_seconds
    predict_seconds: float = 0.0  # reading the MSI and network inference while writing (worker thread)
    correction_seconds: float = 0.0  # adding the correction to each window while writing (worker thread)
    scratch_bytes: int = 0  # pass 1's network output kept on disk and read by pass 2 (0: pass 2 predicted again)
    encode_write_seconds: float = 0.0  # encoding, compressing and writing blocks (main thread)
    cog_seconds: float = 0.0  # --cog: GDAL's COG driver copying the finished file (not in the file's own report)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_overrides(options: FuseOptions) -> dict[str, int]:
    """The model settings a user gave over the preset's (``steps``, ``members``), as :class:`SpectraLift` keywords;
    one place, so ``fuse``, ``batch`` and ``assess`` build the same model from the same options."""
    return {name: value for name in ("steps", "members") if (value := getattr(options, name)) is not None}


def default_output_path(hsi_source: PathLike | Sequence[PathLike], folder: PathLike | None = None) -> Path:
    """``<folder or cwd>/<HSI stem>_fused.tif``: next to where the user works, never over an input."""
    first = Path(hsi_source if isinstance(hsi_source, (str, Path)) else hsi_source[0])
    return Path(folder or Path.cwd()) / f"{first.stem}_fused.tif"


# ---------------------------------------------------------------------------------------------
# Preparation: read, align, fit
# ---------------------------------------------------------------------------------------------


_REPORT_LOCK = threading.Lock()


@dataclass
class FusionPlan:
    """A fitted model plus everything needed to predict any window of the output grid.

    Picklable (the scenes keep no file open), so the batch runner can ship it to Dask
    workers and predict tiles of one scene in parallel.
    """

    hsi: Scene
    msi: Scene
    msi_band_indices: list[int]  # 0-based MSI bands fed to the model, in R's row order
    response: np.ndarray  # (m, C_good)
    hsi_grid: Grid  # HSI subset grid used for training (after the shift correction)
    hsi_valid: np.ndarray  # (h, w) bool on hsi_grid
    output: coreg.Overlap  # output grid and its window in the HR-MSI
    model: SpectraLift
    agreement: coreg.RadiometricAgreement | None
    report: FuseReport
    options: FuseOptions
    correction: rf.Correction | None = None  # the consistency step's LR correction (None: not applied)
    novelty: qa.NoveltyIndex | None = None  # what the network was trained on, for the QA layer's novelty
    scratch: NetworkScratch | None = None  # pass 1's network output on disk (fuse_files only; never pickled)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"scratch": None}  # a temporary file of this process's: other processes predict

    @property
    def grid(self) -> Grid:
        return self.output.grid

    def output_windows(self) -> list[Window]:
        """The windows the output is written in, row by row: one GeoTIFF tile each (``options.tile_size``)."""
        return list(self.grid.block_windows(self.options.tile_size))

    def model_input(self, window: Window) -> np.ndarray:
        """The HR-MSI block the model sees for ``window`` of the output grid: harmonised if asked, NaN outside
        the valid HSI footprint."""
        return self._model_input(_int_window(window))[0]

    def _model_input(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`model_input`, and the (rows, cols) mask of the valid HSI footprint it applied."""
        msi_window = Window(
            window.col_off + self.output.window.col_off,
            window.row_off + self.output.window.row_off,
            window.width,
            window.height,
        )
        msi_block = self.msi.read(window=msi_window, bands=self.msi_band_indices)
        if self.agreement is not None:
            msi_block = coreg.harmonize(msi_block, self.agreement)
        covered = coreg.coverage_mask(self.hsi_grid, self.grid.subgrid(window), self.hsi_valid)
        msi_block[:, ~covered] = np.nan
        return msi_block, covered

    def predict_window(self, window: Window, qa: bool = False) -> tuple[np.ndarray, ...]:
        """HR-HSI block for ``window`` of the output grid: (all HSI bands, rows, cols), NaN = nodata.

        The network's prediction plus, when the plan has one, the consistency correction (pass 2).
        Also returns the MSI block fed to the model, for the SRF-consistency check, and with ``qa`` the
        window's reliability layer (:mod:`geolift.qa`, ``(4, rows, cols)``).
        """
        window = _int_window(window)
        msi_block, covered = self._model_input(window)
        fused_good = self.scratch.get(window) if self.scratch is not None else None  # pass 1's, the same bits
        if fused_good is None:
            fused_good = self.model.predict(msi_block, consistency=False)  # the correction is added below
        correction_rms = None
        if qa and self.correction is not None:
            correction_rms = np.full((window.height, window.width), np.nan, np.float32)
        if self.correction is not None:
            self.apply_correction(fused_good, window, correction_rms)
        quality = self.quality_block(fused_good, msi_block, covered, correction_rms) if qa else None
        if self.hsi.good_bands.all():
            out = fused_good  # no 200-band copy when there is no bad band to fill with NaN
        else:
            out = np.full((self.hsi.count, window.height, window.width), np.nan, np.float32)
            out[self.hsi.good_bands] = fused_good
        return (out, msi_block) if quality is None else (out, msi_block, quality)

    def quality_block(self, fused_good: np.ndarray, msi_block: np.ndarray, covered: np.ndarray,
                      correction_rms: np.ndarray | None) -> np.ndarray:
        """A window's QA bands (:data:`geolift.qa.QA_BANDS`), float32 ``(4, rows, cols)``; ``covered`` is the
        valid HSI footprint :meth:`_model_input` applied."""
        rows, cols = fused_good.shape[1:]
        valid = np.isfinite(fused_good).all(axis=0)
        reason = np.where(valid, qa.NODATA_VALID, np.where(covered, qa.NODATA_NO_MSI, qa.NODATA_OUTSIDE_HSI))
        novelty = (self.novelty.score(msi_block) if self.novelty is not None
                   else np.full((rows, cols), np.nan, np.float32))
        lr = correction_rms if correction_rms is not None else np.full((rows, cols), np.nan, np.float32)
        layers = [qa.srf_residual(self.response, fused_good, msi_block), lr, novelty, reason.astype(np.float32)]
        out = np.stack(layers).astype(np.float32, copy=False)
        out[:3, ~valid] = np.nan
        return out

    def apply_correction(self, fused_good: np.ndarray, window: Window, relative_rms: np.ndarray | None = None) -> None:
        """Add the consistency correction to the network's block (good bands) in place and clip to the
        model's range, as :func:`geolift.refine.refine` does."""
        started = time.perf_counter()
        rf.add_correction(self.correction, fused_good, int(window.row_off), int(window.col_off),
                          self.model.output_range, relative_rms)
        with _REPORT_LOCK:  # windows may be predicted concurrently (batch tile tasks on threads)
            self.report.correction_seconds += time.perf_counter() - started


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on macOS and Windows
        return max(1, os.cpu_count() or 1)


def prediction_workers(options: FuseOptions) -> int:
    """Threads that predict blocks at once: the job's threads (``num_threads``) over torch's threads per
    prediction, so that by default (1 torch thread) every core predicts while GDAL compresses; 0 (predict on
    the consuming thread) when the job has a single thread, as a batch task on a one-thread worker has."""
    if int(options.num_threads) <= 1:
        return 0
    return max(1, int(options.num_threads) // max(1, int(options.torch_threads or 1)))


def _int_window(window: Window) -> Window:
    return Window(int(window.col_off), int(window.row_off), int(window.width), int(window.height))


@dataclass
class PairObservation:
    """Both scenes read and co-registered on the HSI grid, before any training (what :func:`observe_pair` finds)."""

    hsi: Scene
    msi: Scene
    response: srf.SpectralResponse
    band_indices: list[int]  # 0-based MSI bands in the response's row order
    hsi_grid: Grid  # HSI subset grid (after the shift correction)
    hsi_valid: np.ndarray  # (h, w) bool on hsi_grid
    output: coreg.Overlap  # output grid and its window in the HR-MSI
    lr_hsi: np.ndarray  # (good bands, h, w) on hsi_grid, NaN = nodata
    observed: np.ndarray  # (m, h, w) the HR-MSI area-averaged onto hsi_grid
    synthetic: np.ndarray  # (m, h, w) the response applied to lr_hsi
    agreement: coreg.RadiometricAgreement
    report: FuseReport


#: Days between the two acquisitions past which the log warns: the ground may have changed (crops, snow, water).
MAX_DAYS_APART = 10


def _report_msi_product(msi: Scene, report: FuseReport) -> None:
    """An MSI product's identity and masks into the report; the two acquisition times and the days between."""
    report.msi_product = product_identity(msi)
    if "masked_pixels" in msi.tags:
        report.msi_masked_pixels = json.loads(msi.tags["masked_pixels"])
        total = msi.width * msi.height
        share = 100 * min(1.0, sum(report.msi_masked_pixels.values()) / max(total, 1))  # masks may overlap
        log.info("MSI quality masks: %s pixels flagged (at most %.1f%% of the MSI; nodata in the output).",
                 ", ".join(f"{name} {count}" for name, count in report.msi_masked_pixels.items()) or "no", share)
    times = [_acquired(p.get("acquisition_time", "")) for p in (report.hsi_product, report.msi_product)]
    if all(times):
        report.days_apart = round(abs((times[0] - times[1]).total_seconds()) / 86400.0, 2)
        log.info("Acquired: HSI %s, MSI %s: %.1f days apart.", times[0].isoformat(), times[1].isoformat(),
                 report.days_apart)
        if report.days_apart > MAX_DAYS_APART:
            warn(f"The HSI and the MSI were acquired {report.days_apart:.0f} days apart (more than "
                 f"{MAX_DAYS_APART}): the ground may have changed between them (crops, water, snow).")


def _acquired(text: str) -> datetime.datetime | None:
    """An ISO acquisition time as an aware UTC datetime (naive ones are taken as UTC), or None."""
    text = text.strip().replace("Z", "+00:00")
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)  # +0000 -> +00:00
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def observe_pair(
    hsi_source: PathLike | Sequence[PathLike],
    msi_source: PathLike | Sequence[PathLike],
    options: FuseOptions | None = None,
    progress: Progress | None = None,
) -> PairObservation:
    """Read both scenes, build the response, co-register, measure their agreement and check the pair."""
    options = options or FuseOptions()
    report = FuseReport(options=options.to_dict())
    hsi = open_scene(hsi_source, require_wavelengths=True, overlap=options.overlap)
    output_encoding(hsi, options).probe(hsi.count)  # options GDAL refuses for this data fail now, not after training
    msi = open_scene(msi_source)
    report.hsi, report.msi = list(map(str, hsi.paths)), list(map(str, msi.paths))
    report.hsi_crs, report.msi_crs = hsi.crs.to_string(), msi.crs.to_string()
    report.hsi_bands, report.bad_bands = hsi.count, int((~hsi.good_bands).sum())
    report.hsi_product = product_identity(hsi)
    if "masked_pixels" in hsi.tags:
        report.hsi_masked_pixels = json.loads(hsi.tags["masked_pixels"])
        log.info("HSI quality masks: %s pixels flagged (left out everywhere, nodata in the output).", ", ".join(
            f"{name} {count}" for name, count in report.hsi_masked_pixels.items()) or "no")
    log.info(
        "HSI: %s (%d x %d px, %d bands, %s); MSI: %s (%d x %d px, %d bands, %s)",
        Path(hsi.path).name, hsi.width, hsi.height, hsi.count, report.hsi_crs,
        Path(msi.path).name, msi.width, msi.height, msi.count, report.msi_crs,
    )

    msi, sensor, bands, drop_uncovered = msi_product_choices(msi, options.sensor, options.bands, options.srf_path)
    if options.resolution is not None:
        if options.resolution < min(msi.res) * (1 - 1e-9):
            raise InputError(f"--resolution {options.resolution:g} is finer than the MSI's finest grid "
                             f"({min(msi.res):g}); geolift does not invent detail.")
        msi = msi.regrid(options.resolution)
        log.info("MSI on a %g grid (%d x %d px): finer bands averaged onto it.", options.resolution, msi.width,
                 msi.height)
    _report_msi_product(msi, report)
    curves, msi_band_names = msi_response_curves(msi, sensor, options.srf_path, bands)
    good = hsi.good_bands
    fwhm = hsi.fwhm_nm[good] if hsi.fwhm_nm is not None else None
    response = srf.build_response(
        curves, msi_band_names, hsi.wavelengths_nm[good], fwhm_nm=fwhm, units="nm",
        drop_uncovered=options.drop_uncovered or drop_uncovered,
    )
    band_indices = [msi_band_names.index(b) for b in response.bands]
    report.srf = curves.display_name
    report.msi_bands, report.dropped_bands = list(response.bands), list(response.dropped)
    log.info("Response: %s bands %s on %d HSI bands (%d bad bands left out).",
             curves.display_name, ", ".join(response.bands), int(good.sum()), report.bad_bands)

    hsi_full_grid = Grid.like(hsi)
    msi_grid = Grid.like(msi)
    ov = coreg.overlap(hsi_full_grid, msi_grid)
    report.resolution_ratio = float(coreg.resolution_ratio(hsi_full_grid, msi_grid))
    hsi_grid = hsi_full_grid.subgrid(ov.hsi_window)
    lr_hsi = hsi.read(window=ov.hsi_window, bands=good)
    hsi_valid = np.isfinite(lr_hsi).all(axis=0)
    if not hsi_valid.any():
        raise InputError(f"{hsi.path} has no valid pixel where it overlaps {msi.path}.")
    _tick(progress, 1, 3, "read")

    synthetic = np.tensordot(response.matrix, lr_hsi, axes=1).astype(np.float32)
    observed = _aggregate_msi(msi, band_indices, msi_grid, hsi_grid)
    _tick(progress, 2, 3, "read")
    if options.align:
        shift = coreg.estimate_shift(observed, synthetic, hsi_grid)
        report.shift_px, report.shift_m = (shift.dy, shift.dx), (shift.dy_m, shift.dx_m)
        report.shift_peak = float(shift.peak)
        log.info("Residual shift HSI vs MSI: dy=%.3f dx=%.3f HSI px (%.2f m, %.2f m), peak %.2f.",
                 shift.dy, shift.dx, shift.dy_m, shift.dx_m, shift.peak)
        if shift.peak >= coreg.MIN_SHIFT_PEAK and shift.exceeds(options.shift_threshold_px):
            hsi_full_grid = hsi_full_grid.shifted(shift.dy, shift.dx)
            ov = coreg.overlap(hsi_full_grid, msi_grid)
            hsi_grid = hsi_full_grid.subgrid(ov.hsi_window)
            lr_hsi = hsi.read(window=ov.hsi_window, bands=good)
            hsi_valid = np.isfinite(lr_hsi).all(axis=0)
            synthetic = np.tensordot(response.matrix, lr_hsi, axes=1).astype(np.float32)
            observed = _aggregate_msi(msi, band_indices, msi_grid, hsi_grid)
            report.shift_applied = True
            log.info("Shift corrected by moving the HSI geotransform.")
        elif shift.peak < coreg.MIN_SHIFT_PEAK:
            log.warning("The shift estimate is unreliable (peak %.2f); no correction applied.", shift.peak)
    agreement = coreg.radiometric_agreement(observed, synthetic)
    report.band_agreement = [
        {"band": b, "gain": float(g), "offset": float(o), "correlation": float(r)}
        for b, g, o, r in zip(response.bands, agreement.gain, agreement.offset, agreement.correlation)
    ]
    for row in report.band_agreement:
        log.info("Band %s agreement (HSI ≈ gain·MSI + offset): gain %.3f, offset %.4g, r %.3f",
                 row["band"], row["gain"], row["offset"], row["correlation"])
    check = checks.check_pair(response.bands, observed, synthetic, report.shift_peak)
    report.pair_check = check.to_dict()
    if check.note:
        log.warning("Pair check: %s.", check.summary())
    elif check.consistent:
        log.info("Pair check: %s.", check.summary())
    elif options.strict:
        raise InconsistentPairError(f"Refused (--strict): {check.summary()}")
    else:
        log.warning("%s", check.summary()[0].upper() + check.summary()[1:] + " The output may be poor.")
    report.harmonized = options.harmonize
    _tick(progress, 3, 3, "read")

    ow = ov.window
    report.msi_window = (int(ow.col_off), int(ow.row_off), int(ow.width), int(ow.height))
    report.output_size = (int(ow.width), int(ow.height))
    report.output_bounds = tuple(float(v) for v in ov.grid.bounds)
    log.info("Output grid: %d x %d px of the MSI grid (ratio %.2f), CRS %s.",
             ow.width, ow.height, report.resolution_ratio, report.msi_crs)

    return PairObservation(hsi=hsi, msi=msi, response=response, band_indices=band_indices, hsi_grid=hsi_grid,
                           hsi_valid=hsi_valid, output=ov, lr_hsi=lr_hsi, observed=observed, synthetic=synthetic,
                           agreement=agreement, report=report)


def prepare_fusion(
    hsi_source: PathLike | Sequence[PathLike],
    msi_source: PathLike | Sequence[PathLike],
    options: FuseOptions | None = None,
    progress: Progress | None = None,
    scratch_dir: PathLike | None = None,
    scratch_max_pixels: int | None = None,
) -> FusionPlan:
    """Read both scenes, build the response, co-register, and fit the model; with the consistency step, run its
    pass 1 and, given ``scratch_dir``, keep the network's output there for pass 2 (:mod:`geolift.scratch`; the
    caller closes ``plan.scratch``) unless the output grid has more than ``scratch_max_pixels`` pixels (a
    ``geolift batch`` job that other processes will write, tile task by tile task, from their own predictions)."""
    options = options or FuseOptions()
    # Built first: a preset, step count or device it refuses (CUDA asked for on a CPU-only machine) stops the run
    # before any scene is read.
    model = SpectraLift(preset=options.preset, seed=options.seed, device=options.device, **model_overrides(options))
    pair = observe_pair(hsi_source, msi_source, options, progress)
    hsi, msi, response, report = pair.hsi, pair.msi, pair.response, pair.report
    band_indices, hsi_grid, hsi_valid, ov = pair.band_indices, pair.hsi_grid, pair.hsi_valid, pair.output
    lr_hsi, synthetic, agreement = pair.lr_hsi, pair.synthetic, pair.agreement
    del pair  # lr_hsi is freed below once the consistency step has its coefficient maps

    # lr_hsi is already NaN wherever a band is (nodata is NaN, hsi_valid = all bands finite): no masked copy.
    report.training_pixels = int(hsi_valid.sum())
    plan = FusionPlan(
        hsi=hsi, msi=msi, msi_band_indices=band_indices, response=response.matrix,
        hsi_grid=hsi_grid, hsi_valid=hsi_valid, output=ov, model=model,
        agreement=agreement if options.harmonize else None, report=report, options=options,
        novelty=qa.NoveltyIndex(synthetic[:, hsi_valid].T, seed=options.seed),
    )
    networks = f"{model.steps} steps"
    if model.members > 1:
        networks = f"{model.members} networks of {networks}"
        if model.distills:
            networks += f", then their student of {model.student_steps}"
    log.info("Training on %d LR pixels (%s preset, %s, seed %d, %s).",
             report.training_pixels, model.preset, networks, options.seed, options.device)
    started = time.perf_counter()
    student_pixels = distillation_sample(plan) if model.distills else None
    with torch_threads(options.torch_threads):
        model.fit(lr_hsi, response.matrix, progress=progress, keep_lr_hsi=False,  # pass 1 below, window by window
                  hr_pixels=student_pixels)
    report.train_seconds = time.perf_counter() - started
    if student_pixels is not None:
        report.student_pixels = int(np.isfinite(student_pixels).all(axis=1).sum())
        log.info("The %d networks' mean taught one network on %d of the MSI's pixels; it predicts the output.",
                 model.members, report.student_pixels)
    report.output_range = model.output_range
    log.info("Trained in %.1f s (final L1 loss %.4g).", report.train_seconds,
             model.history[-1] if len(model.history) else math.nan)
    if model.consistency:
        with torch_threads(options.torch_threads):
            observation = observe_low_res(plan, lr_hsi)
            del lr_hsi  # from here on its coefficient maps stand for it (a full EnMAP scene: 0.8 GB -> 160 MB)
            whole = scratch_max_pixels is None or plan.grid.width * plan.grid.height <= scratch_max_pixels
            if observation is not None and scratch_dir is not None and whole:
                plan.scratch = _network_scratch(plan, Path(scratch_dir))
            if observation is not None:
                plan.correction = consistency_correction(plan, observation, progress)
    else:
        report.refine_note = f"the {model.preset} preset does not include the consistency step"
    return plan


def distillation_sample(plan: FusionPlan) -> np.ndarray:
    """The (n, m) model inputs on the output grid's :func:`geolift.model.distillation_stride` grid, the pixels an
    ensemble's student learns from: what ``SpectraLift.predict`` takes from the same array (the model's input is
    harmonised and NaN outside the HSI footprint, as the network sees it). Reads the MSI once, in strips of rows."""
    height, width = plan.grid.height, plan.grid.width
    step = distillation_stride(height, width)
    rows = []
    for top in range(0, height, _SAMPLE_STRIP_ROWS):
        strip = plan.model_input(Window(0, top, width, min(_SAMPLE_STRIP_ROWS, height - top)))
        first = -(-top // step) * step - top  # the strip's first row on the grid
        rows.append(strip[:, first::step, ::step])
    sample = np.concatenate(rows, axis=1)
    return sample.reshape(sample.shape[0], -1).T


_SAMPLE_STRIP_ROWS = 256  # rows of the MSI read at a time for the student's sample


#: The smallest output tile pass 2 reads from the scratch: it reads whole strips of pass 1's 512-px windows, so a
#: smaller tile would read more than twice its data (a multiple of the strip height keeps the rows exact).
MIN_SCRATCH_TILE = 256


def _network_scratch(plan: FusionPlan, folder: Path) -> NetworkScratch | None:
    """A scratch for pass 1's network output on the output grid, if the disk has room for it and the output, and
    the output's tiles are large enough to read it back whole (:data:`MIN_SCRATCH_TILE`)."""
    tile = plan.options.tile_size
    if tile < MIN_SCRATCH_TILE or tile % REFINE_STRIP_ROWS:
        log.info("Output tiles of %d px: pass 2 predicts the network's output again (the scratch needs tiles of "
                 "%d px or more, multiples of %d).", tile, MIN_SCRATCH_TILE, REFINE_STRIP_ROWS)
        return None
    bands, (height, width) = int(plan.hsi.good_bands.sum()), (plan.grid.height, plan.grid.width)
    output_bytes = plan.hsi.count * height * width * np.dtype(output_encoding(plan.hsi, plan.options).dtype).itemsize
    scratch = NetworkScratch.create(folder, bands, height, width, REFINE_WINDOW, REFINE_STRIP_ROWS, output_bytes)
    if scratch is not None:
        plan.report.scratch_bytes = scratch.nbytes
        log.info("Pass 1 keeps the network's output for pass 2 in %s (%.1f GB, deleted at the end).", folder,
                 scratch.nbytes / 1e9)
    return scratch


@dataclass
class LowResObservation:
    """What the consistency step keeps of the LR-HSI once training is done: the blur estimated from the data,
    the scene's spectral basis and the LR-HSI's coefficient maps on it (NaN where it has no data)."""

    grid: blur.GridPair
    psf: blur.PSFEstimate
    basis: np.ndarray  # (C, k) orthonormal
    coefficients: np.ndarray  # (k, h, w) float64
    started: float  # perf_counter() when the consistency step began
    started_cpu: float  # process_time() then (CPU seconds of every thread of the process)


def observe_low_res(plan: FusionPlan, lr_hsi: np.ndarray) -> LowResObservation | None:
    """The consistency step's view of the LR-HSI; None (with a warning) where the step cannot apply.

    Estimates the blur on a central window of at most :data:`PSF_WINDOW` pixels and reduces ``lr_hsi`` (the
    HSI's good bands on ``plan.hsi_grid``) to its coefficient maps, so the caller can drop the cube before pass 1.
    """
    report = plan.report
    started, started_cpu = time.perf_counter(), time.process_time()
    if plan.hsi_grid.crs != plan.grid.crs:
        # Tried: the LR-HSI resampled onto a grid in the MSI's CRS. Resampling changes the LR pixels' footprints
        # so they no longer match D(B*X), and on the Wald case in EPSG:4326 the correction made things worse
        # (27.5 -> 21.9 dB). Until the step models a reprojected LR grid, it is skipped.
        return _skip_refine(report, f"the HSI ({plan.hsi_grid.crs}) and the MSI ({plan.grid.crs}) are in "
                                    "different CRSs; the consistency step needs both on one CRS (reproject the "
                                    "HSI onto the MSI's CRS beforehand to use it)")
    try:
        grid = blur.GridPair(plan.grid.transform, (plan.grid.height, plan.grid.width), plan.hsi_grid.transform,
                           plan.hsi_grid.shape)
    except AlignmentError as exc:
        return _skip_refine(report, str(exc).rstrip("."))
    try:
        psf = _estimate_psf(plan, grid, lr_hsi)
    except ModelError as exc:
        return _skip_refine(report, str(exc).rstrip("."))
    report.psf = {"family": psf.family, "width_px": psf.width, "beta": psf.beta, "fwhm_px": psf.fwhm,
                  "boundary": psf.boundary, "misfit": psf.residual, "free_kernel_misfit": psf.free_residual,
                  "shift_hsi_px": list(psf.shift), "radius_px": psf.radius,
                  "parametric_misfit": psf.parametric_residual if psf.family == "free" else psf.residual}
    problem = rf.blur_model_problem(psf)
    if problem is not None:
        return _skip_refine(report, problem)
    log.info("Blur estimated from the data: %s, FWHM %.2f output px (%s border), misfit %.3g.",
             psf.family, psf.fwhm, psf.boundary, psf.residual)
    if any(psf.shift):
        log.info("The HSI grid sits %.2f, %.2f HSI px (x, y) from where its transform puts it, judged from the "
                 "data; the consistency step uses the registered grid.", *psf.shift)
    basis = rf.spectral_subspace(lr_hsi, rf.SUBSPACE_RANK)
    return LowResObservation(psf.registered(grid), psf, basis, rf.lr_coefficients(lr_hsi, basis), started,
                              started_cpu)


def consistency_correction(plan: FusionPlan, observation: LowResObservation, progress: Progress | None = None
                           ) -> rf.Correction | None:
    """Pass 1 of the consistency step: predict every output window once (on :func:`prediction_workers`
    threads, each window reduced strip by strip to the basis coefficients and degraded onto the HSI grid), then
    solve the LR correction. None (with a warning) where the solve fails; the outcome goes to ``plan.report``.
    """
    report, grid, basis = plan.report, observation.grid, observation.basis
    accumulator = rf.LowResAccumulator(grid, observation.psf, n_bands=basis.shape[0], basis=basis)
    windows = list(plan.grid.block_windows(REFINE_WINDOW))

    def network_maps(window: Window) -> np.ndarray:
        """The window's network output reduced to the basis coefficients, strip by strip (small in memory); each
        strip also kept in the plan's scratch, when it has one, for pass 2."""
        msi_block = plan.model_input(window)
        maps = []
        for a in range(0, msi_block.shape[1], REFINE_STRIP_ROWS):
            strip = plan.model.predict(msi_block[:, a:a + REFINE_STRIP_ROWS], consistency=False)
            if plan.scratch is not None:
                plan.scratch.put(strip, int(window.row_off) + a, int(window.col_off))
            maps.append(accumulator.reduce(strip))
        return np.concatenate(maps, axis=1)

    for i, (window, maps) in enumerate(pipelined(network_maps, windows, workers=prediction_workers(plan.options))):
        accumulator.add_maps(maps, int(window.row_off), int(window.col_off))
        _tick(progress, i + 1, 2 * len(windows), "write")  # pass 1 is the first half of the write stage
    try:
        correction = rf.solve_on_basis(observation.coefficients, accumulator.coefficients(in_place=True), basis,
                                       plan.response, accumulator.lr_kernel(), grid)
    except ModelError as exc:
        return _skip_refine(report, str(exc).rstrip("."))
    report.refined = True
    report.refine_regularization = float(correction.regularization)
    report.refine_residual_before = float(correction.residual_before)
    report.refine_residual_after = float(correction.residual_after)
    report.refine_seconds = time.perf_counter() - observation.started
    report.refine_cpu_seconds = time.process_time() - observation.started_cpu
    log.info("Consistency step prepared in %.1f s (LR residual RMS %.4g -> %.4g).", report.refine_seconds,
             correction.residual_before, correction.residual_after)
    return correction


def estimate_blur(plan: FusionPlan, lr_hsi: np.ndarray) -> blur.PSFEstimate:
    """The blur between the output grid and the HSI grid, estimated from the data as the consistency step does
    (``plan`` needs no model: only its grids and MSI reading are used)."""
    grid = blur.GridPair(plan.grid.transform, (plan.grid.height, plan.grid.width), plan.hsi_grid.transform,
                         plan.hsi_grid.shape)
    return _estimate_psf(plan, grid, lr_hsi)


def _estimate_psf(plan: FusionPlan, grid: blur.GridPair, lr_hsi: np.ndarray) -> blur.PSFEstimate:
    """The blur from a central output window and the HSI pixels under it (not the whole scene: cheap)."""
    return rf.estimate_psf_central(lr_hsi, plan.model_input, plan.response, grid)


def _skip_refine(report: FuseReport, reason: str) -> None:
    report.refine_note = reason
    log.warning("Consistency step skipped: %s; the output is the network's prediction alone.", reason)
    return None


def _aggregate_msi(msi: Scene, band_indices: list[int], msi_grid: Grid, hsi_grid: Grid) -> np.ndarray:
    """Area-average the HR-MSI onto the HSI grid, strip by strip so memory stays bounded."""
    out = np.full((len(band_indices), *hsi_grid.shape), np.nan, np.float32)
    for row0 in range(0, hsi_grid.height, AGGREGATION_STRIP_ROWS):
        rows = min(AGGREGATION_STRIP_ROWS, hsi_grid.height - row0)
        strip = hsi_grid.subgrid(Window(0, row0, hsi_grid.width, rows))
        window = _msi_window_covering(strip, msi_grid)
        if window is None:
            continue
        block = msi.read(window=window, bands=band_indices)
        out[:, row0:row0 + rows] = coreg.aggregate_to_grid(block, msi_grid.subgrid(window), strip)
    return out


def _msi_window_covering(grid: Grid, msi_grid: Grid, pad: int = 2) -> Window | None:
    """The MSI window (clipped, padded by a few pixels) that covers ``grid``'s footprint, or None."""
    from rasterio.warp import transform_bounds

    bounds = grid.bounds
    if grid.crs != msi_grid.crs:
        bounds = transform_bounds(grid.crs, msi_grid.crs, *bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=msi_grid.transform)
    col0 = max(int(math.floor(win.col_off)) - pad, 0)
    row0 = max(int(math.floor(win.row_off)) - pad, 0)
    col1 = min(int(math.ceil(win.col_off + win.width)) + pad, msi_grid.width)
    row1 = min(int(math.ceil(win.row_off + win.height)) + pad, msi_grid.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def output_layout(options: FuseOptions) -> dict[str, Any]:
    """The :class:`Encoding` fields the options choose whatever the data type: tiles, compression, threads, COG and
    the user's GDAL creation options."""
    return {"tile": options.tile_size, "compress": options.compress, "num_threads": options.num_threads,
            "options": tuple(options.creation_options), "cog": options.cog}


def check_output_options(options: FuseOptions) -> None:
    """Refuse, before any work, output options that cannot work (``OutputError``): a bad tile size or compression,
    an unknown or refused GDAL creation option or value (:mod:`geolift.io.gdal_options`). What GDAL refuses only
    in combination with the data (e.g. JPEG for int16) is probed once the HSI is open (:meth:`Encoding.probe`)."""
    Encoding(dtype=options.dtype or "float32", **output_layout(options))


def output_encoding(hsi: Scene, options: FuseOptions) -> Encoding:
    """How the output is stored: in the HSI's own units (e.g. reflectance × 10000 as int16), with the options'
    tiles, compression and threads."""
    chosen = options.dtype or ("int16" if np.dtype(hsi.dtype).kind in "iu" else "float32")
    if chosen not in ("int16", "float32"):
        raise InputError(f"Unsupported output dtype {chosen!r}; choose int16 or float32.")
    layout = output_layout(options)
    if chosen == "float32":
        return Encoding(dtype="float32", **layout)
    scale = float(hsi.scales[0]) if len(hsi.scales) else 1.0
    offset = float(hsi.offsets[0]) if len(hsi.offsets) else 0.0
    return Encoding(dtype="int16", scale=scale, offset=offset, **layout)


def output_tags(plan: FusionPlan) -> dict[str, str]:
    """The dataset tags the output gets from its inputs: the HSI's own (not its geolift ones) and the MSI product's
    identity beside them (the writer adds geolift's version, parameters and report)."""
    tags = {k: v for k, v in plan.hsi.tags.items() if k not in ("AREA_OR_POINT",) and not k.startswith("geolift")}
    return tags | {f"msi_{k}": v for k, v in plan.report.msi_product.items()}


def write_fusion(
    plan: FusionPlan,
    output: PathLike,
    progress: Progress | None = None,
    inputs: Sequence[PathLike] = (),
    blocks: Callable[[Window], tuple[np.ndarray, ...]] | None = None,
    qa_path: PathLike | None = None,
) -> FuseReport:
    """Stream every block of the output grid (:meth:`FusionPlan.output_windows`) into a tiled GeoTIFF, atomically.

    A worker thread predicts (and corrects) the next block while the main thread encodes and writes this one, so
    inference and compression share the cores. ``blocks(window)`` gives a window's ``(block, msi_block)`` (and its
    QA block with ``qa_path``) when they are computed elsewhere (``geolift batch``'s tile tasks); by default the
    plan predicts them. ``qa_path`` also writes the reliability layer (:mod:`geolift.qa`) there, block by block.
    """
    options, report, hsi = plan.options, plan.report, plan.hsi
    grid = plan.grid
    keep_tags = output_tags(plan)
    stats = {"sq_error": 0.0, "sq_count": 0, "msi_sum": 0.0, "predict": 0.0}
    refined = getattr(plan, "correction", None) is not None
    report.correction_seconds = 0.0  # apply_correction adds to it (on this machine; not in batch tile tasks)
    all_good = bool(hsi.good_bands.all())
    response32 = torch.from_numpy(np.asarray(plan.response, dtype=np.float32))
    predict = blocks or functools.partial(plan.predict_window, qa=qa_path is not None)

    def produce(window: Window) -> tuple[np.ndarray, tuple[float, float, int, float]]:
        """The window's block and its figures (seconds, SRF-check sums), summed in window order by the
        consumer so that the report does not depend on which worker finished first."""
        t0 = time.perf_counter()
        block, msi_block, *quality = predict(window)
        seconds = time.perf_counter() - t0
        good = block if all_good else block[hsi.good_bands]  # boolean indexing would copy every band
        with torch.inference_mode():  # torch's threads: numpy's BLAS pool would compete with GDAL's
            resynth = torch.mm(response32, torch.from_numpy(good.reshape(good.shape[0], -1))).numpy()
        resynth = resynth.reshape(-1, *good.shape[1:])
        valid = np.isfinite(resynth).all(axis=0)
        figures = (seconds, float(np.sum((resynth[:, valid] - msi_block[:, valid]) ** 2)),
                   int(valid.sum()) * resynth.shape[0], float(np.sum(msi_block[:, valid])))
        return (block, *quality), figures

    started, started_cpu = time.perf_counter(), time.process_time()
    bands = OutputBands(hsi.wavelengths_nm, hsi.fwhm_nm, good=hsi.good_bands)
    inputs = list(inputs) or [*hsi.paths, *plan.msi.paths]
    with ExitStack() as stack:
        qa_writer = None
        if qa_path is not None:  # entered first, so it is finished last: never a QA layer without its output
            qa_encoding = Encoding(**output_layout(options))
            qa_writer = stack.enter_context(HSIWriter(
                qa_path, grid, OutputBands(names=qa.QA_BANDS), qa_encoding, overwrite=options.overwrite,
                inputs=[*inputs, output], tags={"geolift_qa_for": Path(output).name},
            ))
        writer = stack.enter_context(HSIWriter(
            output, grid, bands, output_encoding(hsi, options), tags=keep_tags, parameters=options.to_dict(),
            overwrite=options.overwrite, inputs=inputs,
        ))
        windows = plan.output_windows()
        first, total = (len(windows), 2 * len(windows)) if refined else (0, len(windows))

        def ordered_blocks() -> Iterator[tuple[Window, np.ndarray]]:
            ahead = min(1, prediction_workers(options))  # predict the next block while this one is written
            with closing(pipelined(produce, windows, workers=ahead)) as results:  # closing stops the workers
                for i, (window, ((block, *quality), figures)) in enumerate(results):
                    for key, value in zip(("predict", "sq_error", "sq_count", "msi_sum"), figures):
                        stats[key] += value
                    if qa_writer is not None:
                        qa_writer.write_block(quality[0], window)
                    yield window, block
                    _tick(progress, first + i + 1, total, "write")

        with torch_threads(options.torch_threads):
            writing = writer.write_blocks(ordered_blocks())
        report.output = str(Path(output))
        report.predict_seconds = stats["predict"] - report.correction_seconds
        report.encode_write_seconds = writing
        if stats["sq_count"]:
            report.srf_consistency_rmse = math.sqrt(stats["sq_error"] / stats["sq_count"])
            report.srf_consistency_relative = report.srf_consistency_rmse / (stats["msi_sum"] / stats["sq_count"])
        report.write_seconds = time.perf_counter() - started
        if plan.scratch is not None and plan.scratch.failed:
            report.scratch_bytes = 0
        writer.update_tags(geolift_report=_json(report.to_dict()),
                           geolift_consistency=_json({"refined": report.refined, "note": report.refine_note,
                                                      "psf": report.psf}))
        t0 = time.perf_counter()
    report.encode_write_seconds += time.perf_counter() - t0  # closing flushes the last tiles
    report.cog_seconds = writer.cog_seconds
    report.encode_write_seconds -= writer.cog_seconds
    report.write_seconds = time.perf_counter() - started
    report.write_cpu_seconds = time.process_time() - started_cpu
    log.info("Wrote %s in %.1f s; SRF consistency vs HR-MSI: RMSE %.4g (%.2f %% of the mean).",
             output, report.write_seconds, report.srf_consistency_rmse, 100 * report.srf_consistency_relative)
    return report


def fuse_files(
    hsi_source: PathLike | Sequence[PathLike],
    msi_source: PathLike | Sequence[PathLike],
    output: PathLike | None = None,
    options: FuseOptions | None = None,
    progress: Progress | None = None,
    qa: PathLike | None = None,
) -> FuseReport:
    """Fuse an LR-HSI and an HR-MSI file into an HR-HSI GeoTIFF; returns what was done.

    ``output`` defaults to ``<cwd>/<HSI stem>_fused.tif``; ``qa`` also writes the reliability layer
    (:mod:`geolift.qa`) there. The outputs are checked before any heavy work (writable folder, not an input, not
    existing unless ``options.overwrite``) and written atomically, so a failure never leaves a truncated file.
    """
    options = options or FuseOptions()
    output = Path(output) if output is not None else default_output_path(hsi_source)
    inputs = [*_as_list(hsi_source), *_as_list(msi_source)]
    check_output_options(options)
    check_output_path(output, overwrite=options.overwrite, inputs=inputs)
    if qa is not None:
        check_output_path(qa, overwrite=options.overwrite, inputs=[*inputs, output])
    with ExitStack() as stack:
        scratch_dir = stack.enter_context(scratch_space(options.scratch, output))
        plan = prepare_fusion(hsi_source, msi_source, options, progress, scratch_dir=scratch_dir)
        if plan.scratch is not None:
            stack.callback(plan.scratch.close)  # before the folder goes (last in, first out)
        return write_fusion(plan, output, progress, inputs=inputs, qa_path=qa)


@contextmanager
def scratch_space(choice: str, output: PathLike) -> Iterator[Path | None]:
    """A temporary folder for pass 1's scratch where ``FuseOptions.scratch`` (``choice``) puts it, deleted on
    leaving, also on failure; None for ``"none"``. Raises OutputError for a folder that does not exist."""
    folder = _scratch_folder(choice, Path(output))
    if folder is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(output), dir=folder) as path:
        yield Path(path)


def _scratch_folder(choice: str, output: Path) -> Path | None:
    """Where ``FuseOptions.scratch`` puts pass 1's scratch: beside the output (``auto``), a folder, or None."""
    if choice == "none":
        return None
    folder = output.absolute().parent if choice == "auto" else Path(choice).expanduser()
    if not folder.is_dir():
        raise OutputError(f"The scratch folder {folder} does not exist.")
    return folder


def _as_list(source: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [source] if isinstance(source, (str, Path)) else list(source)


def _tick(progress: Progress | None, done: int, total: int, stage: str) -> None:
    if progress is not None:
        progress(done, total, stage)


def _json(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


__all__ = [
    "FuseOptions", "FuseReport", "FusionPlan", "consistency_correction", "default_output_path", "fuse_files",
    "check_output_options", "output_encoding", "output_layout", "output_tags", "pipelined", "prepare_fusion",
    "usable_cores", "write_fusion",
]
