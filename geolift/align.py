"""Co-registration of a low-resolution hyperspectral scene (LR-HSI) with a high-resolution multispectral one (HR-MSI).

Arrays and grids in, arrays out: this module never opens a file. A :class:`~geolift.grid.Grid` is the
georeferencing of a raster (CRS, affine transform, size); ``Grid.like(dataset)`` takes it from anything with ``crs``,
``transform``, ``width`` and ``height`` attributes (an open rasterio dataset, for instance).

The two scenes may differ in CRS (e.g. the HSI in EPSG:4326 or another UTM zone), pixel size (the ratio need not be
an integer: 30 m / 3.6 m = 8.33), origin and extent. SpectraLift trains on the HSI grid (synthetic LR-MSI -> LR-HSI)
and predicts on the HR-MSI grid, so nothing is ever resampled for the prediction itself; this module supplies

* the common area: :func:`overlap` gives the HR-MSI window that the HSI covers (the output grid) and
  :func:`coverage_mask` the exact footprint within it;
* :func:`aggregate_to_grid`: area-average the HR-MSI onto the HSI grid (NaN-aware), to compare it with the
  synthetic LR-MSI (the MSI response applied to the LR-HSI);
* :func:`estimate_shift`: the residual sub-pixel misregistration between the two (phase correlation), corrected
  by :func:`shift_transform` on the HSI geotransform;
* :func:`radiometric_agreement` and :func:`harmonize`: a per-band linear map that brings HR-MSI values to the
  HSI's radiometry, so the network sees at inference the kind of input it was trained on.

Typical use in the pipeline::

    hsi_grid, msi_grid = Grid.like(hsi_ds), Grid.like(msi_ds)
    ov = overlap(hsi_grid, msi_grid)                       # AlignmentError when the scenes do not overlap
    msi = read(msi_ds, window=ov.window)                   # (m, H, W), NaN = nodata
    synthetic = np.tensordot(R, lr_hsi, axes=1)            # (m, h, w), the synthetic LR-MSI
    observed = aggregate_to_grid(msi, ov.grid, hsi_grid)   # (m, h, w)
    shift = estimate_shift(observed, synthetic, hsi_grid)
    if shift.peak >= MIN_SHIFT_PEAK and shift.exceeds(SHIFT_THRESHOLD_PX):
        hsi_grid = hsi_grid.shifted(shift.dy, shift.dx)    # = Grid(..., shift_transform(transform, dy, dx))
        ov = overlap(hsi_grid, msi_grid)                   # the output window may move by a pixel
        msi = read(msi_ds, window=ov.window)
        observed = aggregate_to_grid(msi, ov.grid, hsi_grid)
    agreement = radiometric_agreement(observed, synthetic)
    ... for each HR-MSI block: model.predict(harmonize(block, agreement)) ...

Sign convention of shifts (one convention everywhere): a shift ``(dy, dx)`` in HSI pixels is where the HSI's
content truly lies relative to where its geotransform puts it. Feature at HSI pixel ``(r, c)`` of the synthetic
LR-MSI appears at ``(r + dy, c + dx)`` in the aggregated HR-MSI, i.e. ``observed(y, x) ≈ synthetic(y - dy, x - dx)``,
and ``shift_transform(transform, dy, dx)`` (= ``transform @ Affine.translation(dx, dy)``) moves the HSI grid onto
the HR-MSI's georeferencing: re-aggregating onto the shifted grid leaves a residual shift of about zero.
The HR-MSI is the geometric reference because it is the output grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from scipy import ndimage

from geolift.errors import AlignmentError
from geolift.grid import Grid, shift_transform

__all__ = [
    "Grid",
    "Overlap",
    "ShiftEstimate",
    "RadiometricAgreement",
    "overlap",
    "coverage_mask",
    "resolution_ratio",
    "aggregate_to_grid",
    "estimate_shift",
    "shift_transform",
    "radiometric_agreement",
    "harmonize",
    "pixel_size_m",
    "DEFAULT_MIN_VALID_FRACTION",
    "SHIFT_THRESHOLD_PX",
    "MIN_SHIFT_PEAK",
]

log = logging.getLogger("geolift")

#: A destination pixel of :func:`aggregate_to_grid` is NaN when less than this fraction of its area is covered by
#: valid source pixels: a half-covered pixel still averages enough fine pixels to be a fair mean.
DEFAULT_MIN_VALID_FRACTION = 0.5

#: Suggested threshold (HSI pixels) above which the pipeline corrects the HSI geotransform. Below a tenth of a pixel
#: the estimate is within its own error (see tests/test_align.py) and the correction would be noise.
SHIFT_THRESHOLD_PX = 0.1

#: Suggested minimum phase-correlation peak (:attr:`ShiftEstimate.peak`) for trusting a shift estimate. On the Berlin
#: sample pair, aggregated HR-MSI vs synthetic LR-MSI gives 0.95–0.99 (0.54 with noise 2-4 times the signal's std
#: added); unrelated images (noise, the scene flipped or transposed) give 0.12–0.33.
MIN_SHIFT_PEAK = 0.5

# Fraction of a pixel by which a window edge may miss a pixel boundary and still count as on it (float noise).
_EDGE_TOLERANCE_PX = 1e-3
_MIN_SHIFT_SIZE = 8  # pixels per side needed for a meaningful phase correlation
_MIN_FIT_PIXELS = 10  # pixels per band needed for a gain/offset fit
_GEOD = Geod(ellps="WGS84")


def pixel_size_m(grid: Grid) -> tuple[float, float]:
    """Pixel size ``(x, y)`` in metres: CRS units times their metre factor, or geodesic lengths at the grid's centre
    for a geographic CRS."""
    if grid.crs.is_geographic:
        cx, cy = grid.transform @ (grid.width / 2, grid.height / 2)
        xres, yres = grid.res
        _, _, dist_x = _GEOD.inv(cx - xres / 2, cy, cx + xres / 2, cy)
        _, _, dist_y = _GEOD.inv(cx, cy - yres / 2, cx, cy + yres / 2)
        return (float(dist_x), float(dist_y))
    factor = grid.crs.linear_units_factor[1] if grid.crs.is_projected else 1.0
    return (grid.res[0] * factor, grid.res[1] * factor)


# ------------------------------------------------------------------------------------------------------- overlap
@dataclass(frozen=True)
class Overlap:
    """Where the two scenes meet.

    ``window``: the HR-MSI pixel window (integer, clipped to the MSI) whose pixels lie inside the HSI's footprint
    (its bounding box in the MSI CRS when the CRSs differ); ``transform``: that window's geotransform; ``grid``: the
    output grid (MSI CRS, ``transform``, window size); ``hsi_window``: the HSI pixels that touch the MSI footprint.
    """

    window: Window
    transform: Affine
    grid: Grid
    hsi_window: Window


def overlap(hsi_grid: Grid, msi_grid: Grid) -> Overlap:
    """The area both scenes cover, as an HR-MSI window (the output grid) and the matching HSI window.

    The HSI footprint is carried into the MSI CRS with densified edges (:func:`rasterio.warp.transform_bounds`), so
    a curved footprint (degrees vs metres, another UTM zone) is bounded correctly. An MSI pixel belongs to the window
    when it lies wholly inside that box, so no output pixel sticks out of the HSI; when the CRSs differ the box is a
    little larger than the true footprint and :func:`coverage_mask` tells the exact pixels.
    Raises :class:`AlignmentError` when the scenes do not overlap.
    """
    hsi_box = _bounds_in(hsi_grid, msi_grid.crs)
    window = _inner_window(msi_grid, hsi_box)
    msi_box = _bounds_in(msi_grid, hsi_grid.crs)
    hsi_window = _outer_window(hsi_grid, msi_box)
    if window is None or hsi_window is None:
        raise AlignmentError(
            "The hyperspectral and multispectral scenes do not overlap: the HSI covers "
            f"{_fmt_box(hsi_box)} and the MSI {_fmt_box(msi_grid.bounds)} in {_crs_name(msi_grid.crs)}."
        )
    grid = msi_grid.subgrid(window)
    log.debug("overlap: MSI window %s, HSI window %s", window, hsi_window)
    return Overlap(window=window, transform=grid.transform, grid=grid, hsi_window=hsi_window)


def coverage_mask(hsi_grid: Grid, grid: Grid, hsi_valid: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the pixels of ``grid`` whose centre falls inside the HSI footprint.

    With ``hsi_valid`` (a boolean ``(h, w)`` mask on the HSI grid, e.g. "all bands finite") the pixel must fall on a
    valid HSI pixel. Meant for the output grid or one block of it (``ov.grid.subgrid(block_window)``) to blank the
    corners of the :func:`overlap` window that a reprojected footprint leaves uncovered.
    """
    src = np.ones(hsi_grid.shape, np.uint8)
    if hsi_valid is not None:
        hsi_valid = np.asarray(hsi_valid, dtype=bool)
        if hsi_valid.shape != hsi_grid.shape:
            raise AlignmentError(
                f"The HSI validity mask has shape {hsi_valid.shape} but the HSI grid is {hsi_grid.shape}."
            )
        src = hsi_valid.astype(np.uint8)
    dst = np.zeros(grid.shape, np.uint8)
    reproject(
        src,
        dst,
        src_transform=hsi_grid.transform,
        src_crs=hsi_grid.crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        resampling=Resampling.nearest,
        src_nodata=None,
        dst_nodata=None,
        init_dest_nodata=False,
    )
    return dst.astype(bool)


def resolution_ratio(hsi_grid: Grid, msi_grid: Grid) -> float:
    """How many MSI pixels fit along one HSI pixel: ``sqrt(HSI pixel area / MSI pixel area)``, both in HSI CRS units.

    The MSI pixel is carried into the HSI CRS through the local Jacobian of the CRS transformation at the centre of
    the common area (the MSI centre when the scenes do not overlap), so degrees vs metres or two UTM zones compare
    correctly. 30 m vs 3.6 m gives 8.33; the ratio need not be an integer.
    """
    try:
        centre = _overlap_centre(hsi_grid, msi_grid)
    except AlignmentError:
        centre = msi_grid.transform @ (msi_grid.width / 2, msi_grid.height / 2)
    step = max(1.0, min(msi_grid.width, msi_grid.height) / 4)  # a long baseline keeps the Jacobian free of float noise
    t = msi_grid.transform
    cx, cy = centre
    xs = [cx, cx + step * t.a, cx + step * t.b]
    ys = [cy, cy + step * t.d, cy + step * t.e]
    hx, hy = warp_transform(msi_grid.crs, hsi_grid.crs, xs, ys)
    u = np.array([hx[1] - hx[0], hy[1] - hy[0]]) / step
    v = np.array([hx[2] - hx[0], hy[2] - hy[0]]) / step
    msi_area = abs(u[0] * v[1] - u[1] * v[0])
    hsi_area = abs(hsi_grid.transform.determinant)
    if not np.isfinite(msi_area) or msi_area == 0:
        raise AlignmentError("The multispectral pixel size cannot be expressed in the hyperspectral CRS.")
    return float(math.sqrt(hsi_area / msi_area))


# --------------------------------------------------------------------------------------------------- aggregation
def aggregate_to_grid(
    array: np.ndarray,
    src_grid: Grid,
    dst_grid: Grid,
    *,
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
    num_threads: int = 1,
) -> np.ndarray:
    """Area-average ``array`` ``(m, H, W)`` (or ``(H, W)``) on ``src_grid`` onto ``dst_grid``: ``(m, h, w)`` float32.

    GDAL's ``average`` resampling weights every source pixel by the fraction of it inside the destination pixel, so
    non-nesting grids (8.33 fine pixels per coarse one) and other CRSs are handled. NaN sources are ignored. A
    destination pixel is NaN when less than ``min_valid_fraction`` (default 0.5) of its area is covered by source
    pixels that are valid in every band (outside the source raster counts as invalid), so edge pixels are not the
    mean of a sliver.
    """
    data = np.asarray(array)
    squeeze = data.ndim == 2
    if squeeze:
        data = data[None]
    if data.ndim != 3 or data.shape[1:] != src_grid.shape:
        raise AlignmentError(
            f"The array to aggregate has shape {np.shape(array)} but its grid is {src_grid.height} x {src_grid.width}."
        )
    if not 0.0 < min_valid_fraction <= 1.0:
        raise ValueError("min_valid_fraction must be in (0, 1]")
    data = data.astype(np.float32, copy=False)
    out = np.full((data.shape[0],) + dst_grid.shape, np.nan, np.float32)
    common = dict(
        src_transform=src_grid.transform,
        src_crs=src_grid.crs,
        dst_transform=dst_grid.transform,
        dst_crs=dst_grid.crs,
        resampling=Resampling.average,
        num_threads=num_threads,
    )
    reproject(data, out, src_nodata=np.nan, dst_nodata=np.nan, **common)

    # Valid-area fraction: average a 0/255 mask padded with invalid pixels, so that the part of a destination pixel
    # beyond the source raster counts as invalid (GDAL averages only over source pixels that exist).
    valid = np.isfinite(data).all(axis=0)
    pad = int(math.ceil(_dst_pixel_in_src_pixels(src_grid, dst_grid))) + 2
    mask = np.zeros((src_grid.height + 2 * pad, src_grid.width + 2 * pad), np.uint8)
    mask[pad:-pad, pad:-pad] = valid.astype(np.uint8) * 255
    fraction = np.zeros(dst_grid.shape, np.uint8)
    reproject(
        mask,
        fraction,
        src_nodata=None,
        dst_nodata=None,
        init_dest_nodata=False,
        **{**common, "src_transform": src_grid.transform @ Affine.translation(-pad, -pad)},
    )
    out[:, fraction < min_valid_fraction * 255 - 0.5] = np.nan  # 0/255 steps: half a step of slack
    return out[0] if squeeze else out


def _dst_pixel_in_src_pixels(src_grid: Grid, dst_grid: Grid) -> float:
    """About how many source pixels one destination pixel spans along an axis (for padding)."""
    try:
        return max(1.0, resolution_ratio(dst_grid, src_grid))
    except AlignmentError:
        return 1.0


# -------------------------------------------------------------------------------------------------- shift estimate
@dataclass(frozen=True)
class ShiftEstimate:
    """Residual misregistration of the HSI relative to the HR-MSI (sign convention: module docstring).

    ``dy``, ``dx``: in HSI pixels (rows, columns); ``dy_m``, ``dx_m``: the same in metres along those axes (NaN when
    no grid was given); ``peak``: height of the phase-correlation peak in [0, 1], a confidence measure (see
    :data:`MIN_SHIFT_PEAK`); ``n_pixels``: HSI pixels that took part.
    """

    dy: float
    dx: float
    dy_m: float
    dx_m: float
    peak: float
    n_pixels: int

    @property
    def magnitude(self) -> float:
        """Length of the shift in HSI pixels."""
        return float(math.hypot(self.dy, self.dx))

    @property
    def magnitude_m(self) -> float:
        """Length of the shift in metres (NaN without a grid)."""
        return float(math.hypot(self.dy_m, self.dx_m))

    def exceeds(self, threshold_px: float = SHIFT_THRESHOLD_PX) -> bool:
        """True when the shift is longer than ``threshold_px`` HSI pixels (worth correcting)."""
        return self.magnitude > threshold_px


def estimate_shift(
    observed: np.ndarray,
    synthetic: np.ndarray,
    grid: Grid | None = None,
    *,
    upsample: int = 100,
    max_iterations: int = 3,
) -> ShiftEstimate:
    """Sub-pixel shift of ``observed`` relative to ``synthetic``, both ``(m, h, w)`` (or ``(h, w)``) on the HSI grid.

    ``observed`` is the HR-MSI aggregated onto the HSI grid, ``synthetic`` the MSI response applied to the LR-HSI;
    the result satisfies ``observed(y, x) ≈ synthetic(y - dy, x - dx)`` (module docstring). ``grid`` (the HSI grid)
    only turns pixels into metres.

    Method (phase correlation): pixels valid in every band of both images are kept (their bounding box, the rest
    filled); each band is standardised, weighted by a Hann window times a taper that fades to zero towards invalid
    pixels (against edge effects), and Fourier transformed; the band cross-power spectra are summed and whitened, so
    gain and offset differences do not matter, then weighted by a Gaussian low-pass (sigma 0.15 cycles/pixel:
    aggregated images alias above that, and aliased frequencies do not shift with the scene). The integer peak of
    the correlation surface is refined to ``1/upsample`` pixel by evaluating the inverse transform on a fine grid
    around it (upsampled matrix DFT). A window shared by both images pulls the estimate towards zero, so the
    synthetic image is then resampled by the estimate (cubic spline) and the residual estimated again, up to
    ``max_iterations`` times or until it changes by less than 0.01 pixel; on Wald-protocol tests the error stays
    below 0.05 HSI pixel. Raises :class:`AlignmentError` when fewer than 8 x 8 common valid pixels exist.
    """
    obs, syn = _paired_cubes(observed, synthetic, "shift estimation")
    obs = obs.astype(np.float64)
    syn = syn.astype(np.float64)
    dy, dx, peak, n_pixels = _phase_correlation(obs, syn, upsample)
    for _ in range(max(0, int(max_iterations))):
        residual_y, residual_x, peak, n_pixels = _phase_correlation(obs, _shift_image(syn, dy, dx), upsample)
        dy, dx = dy + residual_y, dx + residual_x
        if math.hypot(residual_y, residual_x) < 0.01:
            break

    dy_m = dx_m = float("nan")
    if grid is not None:
        xres_m, yres_m = pixel_size_m(grid)
        dy_m, dx_m = dy * yres_m, dx * xres_m
    estimate = ShiftEstimate(dy=dy, dx=dx, dy_m=dy_m, dx_m=dx_m, peak=peak, n_pixels=n_pixels)
    log.debug("estimated shift: %s", estimate)
    return estimate


_LOWPASS_SIGMA = 0.15  # cycles per pixel


def _phase_correlation(obs: np.ndarray, syn: np.ndarray, upsample: int) -> tuple[float, float, float, int]:
    """One low-pass weighted phase correlation of two ``(m, h, w)`` cubes: ``(dy, dx, peak, n_pixels)``."""
    valid = np.isfinite(obs).all(axis=0) & np.isfinite(syn).all(axis=0)
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size < _MIN_SHIFT_SIZE or cols.size < _MIN_SHIFT_SIZE:
        raise AlignmentError(
            "The scenes share too few valid pixels to estimate their misregistration "
            f"(at least {_MIN_SHIFT_SIZE} x {_MIN_SHIFT_SIZE} HSI pixels are needed)."
        )
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    valid = valid[box[1:]]
    weight = _hann2d(valid.shape) * _edge_taper(valid)
    cross = np.zeros(valid.shape, np.complex128)
    for band_obs, band_syn in zip(obs[box], syn[box]):
        spec_obs = np.fft.fft2(_standardised(band_obs, valid) * weight)
        spec_syn = np.fft.fft2(_standardised(band_syn, valid) * weight)
        cross += spec_obs * np.conj(spec_syn)
    magnitude = np.abs(cross)
    cross = np.where(magnitude > magnitude.max() * 1e-12, cross / np.maximum(magnitude, 1e-300), 0)
    fy = np.fft.fftfreq(valid.shape[0])[:, None]
    fx = np.fft.fftfreq(valid.shape[1])[None, :]
    cross *= np.exp(-0.5 * (fy**2 + fx**2) / _LOWPASS_SIGMA**2)
    cross *= cross.size / max(float(np.abs(cross).sum()), 1e-300)  # a perfect match peaks at 1

    surface = np.fft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    n_rows, n_cols = surface.shape
    coarse_y = iy - n_rows if iy > n_rows // 2 else iy
    coarse_x = ix - n_cols if ix > n_cols // 2 else ix
    dy, dx, peak = _refine_peak(cross, float(coarse_y), float(coarse_x), upsample)
    return dy, dx, peak, int(valid.sum())


def _shift_image(cube: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``cube`` resampled so that ``out(y, x) = cube(y - dy, x - dx)`` (cubic spline); pixels that draw on NaN or on
    the outside become NaN."""
    valid = np.isfinite(cube).all(axis=0)
    out = np.empty_like(cube)
    for b, band in enumerate(cube):
        filled = np.where(valid, band, band[valid].mean() if valid.any() else 0.0)
        out[b] = ndimage.shift(filled, (dy, dx), order=3, mode="nearest")
    reach = ndimage.shift(valid.astype(np.float64), (dy, dx), order=1, mode="constant", cval=0.0)
    out[:, reach < 0.999] = np.nan
    return out


def _refine_peak(cross: np.ndarray, y0: float, x0: float, upsample: int) -> tuple[float, float, float]:
    """Maximum of the inverse DFT of ``cross`` near ``(y0, x0)``, evaluated on a ``1/upsample`` pixel grid.

    Uses the band-limited interpolation the DFT itself implies (frequencies from ``fftfreq``), computed as two small
    matrix products instead of a zero-padded FFT of the whole image.
    """
    upsample = max(1, int(upsample))
    n_rows, n_cols = cross.shape
    half = int(math.ceil(0.75 * upsample))  # search +-0.75 pixel around the integer peak
    offsets = np.arange(-half, half + 1) / upsample
    ys, xs = y0 + offsets, x0 + offsets
    ky, kx = np.fft.fftfreq(n_rows), np.fft.fftfreq(n_cols)
    row_kernel = np.exp(2j * np.pi * np.outer(ys, ky))  # (S, n_rows)
    col_kernel = np.exp(2j * np.pi * np.outer(kx, xs))  # (n_cols, S)
    fine = (row_kernel @ cross @ col_kernel).real / cross.size
    iy, ix = np.unravel_index(int(np.argmax(fine)), fine.shape)
    return float(ys[iy]), float(xs[ix]), float(np.clip(fine[iy, ix], 0.0, 1.0))


def _standardised(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Band minus its valid mean over its valid std (1 if flat), invalid pixels set to 0."""
    values = band[valid].astype(np.float64)
    std = values.std()
    out = (band.astype(np.float64) - values.mean()) / (std if std > 0 else 1.0)
    out[~valid] = 0.0
    return out


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    """Separable Hann window (no zero at both ends: the periodic form keeps the edge pixels)."""
    return np.outer(np.hanning(shape[0] + 2)[1:-1], np.hanning(shape[1] + 2)[1:-1])


def _edge_taper(valid: np.ndarray, width: float = 3.0) -> np.ndarray:
    """Weight rising smoothly from 0 at invalid pixels to 1 at ``width`` pixels from them (a raised cosine)."""
    if valid.all():
        return np.ones(valid.shape)
    distance = ndimage.distance_transform_edt(valid)
    ramp = np.clip(distance / width, 0.0, 1.0)
    return np.sin(0.5 * np.pi * ramp) ** 2


# ---------------------------------------------------------------------------------------------------- radiometry
@dataclass(frozen=True)
class RadiometricAgreement:
    """Per-band agreement between the aggregated HR-MSI (observed) and the synthetic LR-MSI, arrays of length m.

    ``gain``, ``offset``: least squares ``synthetic ≈ gain * observed + offset``, the direction that brings HR-MSI
    values to the HSI's radiometry (the network is trained on synthetic LR-MSI, so that is what its input should look
    like; regressing the synthetic on the observed is also the least-squares best prediction of it).
    ``correlation``: Pearson r; ``rmse``: residual of the fit in synthetic units; ``n_pixels``: pixels per band.
    """

    gain: np.ndarray
    offset: np.ndarray
    correlation: np.ndarray
    rmse: np.ndarray
    n_pixels: np.ndarray


def radiometric_agreement(observed: np.ndarray, synthetic: np.ndarray) -> RadiometricAgreement:
    """Fit ``synthetic ≈ gain * observed + offset`` per band over pixels finite in both, ``(m, h, w)`` each.

    A flat observed band gets gain 0 and the synthetic mean as offset (and NaN correlation). Raises
    :class:`AlignmentError` when a band has fewer than 10 common valid pixels.
    """
    obs, syn = _paired_cubes(observed, synthetic, "radiometric comparison")
    m = obs.shape[0]
    gain, offset, corr, rmse = (np.full(m, np.nan) for _ in range(4))
    count = np.zeros(m, np.int64)
    for b in range(m):
        x, y = obs[b].ravel().astype(np.float64), syn[b].ravel().astype(np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        count[b] = int(keep.sum())
        if count[b] < _MIN_FIT_PIXELS:
            raise AlignmentError(
                f"Band {b + 1} has only {count[b]} pixels valid in both scenes; at least {_MIN_FIT_PIXELS} are needed "
                "to compare their radiometry."
            )
        x, y = x[keep], y[keep]
        xc, yc = x - x.mean(), y - y.mean()
        sxx, syy, sxy = float(xc @ xc), float(yc @ yc), float(xc @ yc)
        gain[b] = sxy / sxx if sxx > 0 else 0.0
        offset[b] = y.mean() - gain[b] * x.mean()
        corr[b] = sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else np.nan
        rmse[b] = math.sqrt(float(np.mean((y - gain[b] * x - offset[b]) ** 2)))
    agreement = RadiometricAgreement(gain=gain, offset=offset, correlation=corr, rmse=rmse, n_pixels=count)
    log.debug("radiometric agreement: gain %s offset %s r %s", gain, offset, corr)
    return agreement


def harmonize(msi_block: np.ndarray, agreement: RadiometricAgreement) -> np.ndarray:
    """Bring HR-MSI data ``(m, ...)`` (band-first, any block shape) to the HSI's radiometry: ``gain * x + offset``.

    Returns float32; NaN stays NaN.
    """
    block = np.asarray(msi_block)
    m = agreement.gain.shape[0]
    if block.ndim < 1 or block.shape[0] != m:
        bands = block.shape[0] if block.ndim else 0
        raise AlignmentError(f"The MSI block has {bands} bands but the radiometric fit has {m}.")
    shape = (m,) + (1,) * (block.ndim - 1)
    gain = agreement.gain.astype(np.float32).reshape(shape)
    offset = agreement.offset.astype(np.float32).reshape(shape)
    return block.astype(np.float32, copy=False) * gain + offset


# ------------------------------------------------------------------------------------------------------- helpers
def _paired_cubes(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    a = a[None] if a.ndim == 2 else a
    b = b[None] if b.ndim == 2 else b
    if a.ndim != 3 or a.shape != b.shape:
        raise AlignmentError(
            f"The observed and synthetic images for {what} must have the same (bands, rows, cols) shape; "
            f"got {np.shape(a)} and {np.shape(b)}."
        )
    return a, b


def _bounds_in(grid: Grid, crs: CRS) -> tuple[float, float, float, float]:
    """Bounds of ``grid`` in ``crs``, densified so curved edges are bounded."""
    if grid.crs == crs:
        return grid.bounds
    try:
        box = transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=51)
    except Exception as exc:  # noqa: BLE001 - PROJ failures surface as several rasterio/pyproj types
        raise AlignmentError(
            f"The footprint cannot be transformed from {_crs_name(grid.crs)} to {_crs_name(crs)}: {exc}."
        ) from None
    if not all(np.isfinite(box)):
        raise AlignmentError(f"The footprint cannot be transformed from {_crs_name(grid.crs)} to {_crs_name(crs)}.")
    return tuple(float(v) for v in box)


def _fractional_span(grid: Grid, box) -> tuple[float, float, float, float]:
    """``box`` in fractional pixel coordinates of ``grid``: (col_start, row_start, col_stop, row_stop)."""
    left, bottom, right, top = box
    inv = ~grid.transform
    c0, r0 = inv @ (left, top)
    c1, r1 = inv @ (right, bottom)
    return min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)


def _inner_window(grid: Grid, box) -> Window | None:
    """Pixels of ``grid`` wholly inside ``box`` (clipped to the grid), or None."""
    c0, r0, c1, r1 = _fractional_span(grid, box)
    col0 = max(0, math.ceil(c0 - _EDGE_TOLERANCE_PX))
    row0 = max(0, math.ceil(r0 - _EDGE_TOLERANCE_PX))
    col1 = min(grid.width, math.floor(c1 + _EDGE_TOLERANCE_PX))
    row1 = min(grid.height, math.floor(r1 + _EDGE_TOLERANCE_PX))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _outer_window(grid: Grid, box) -> Window | None:
    """Pixels of ``grid`` that touch ``box`` (clipped to the grid), or None."""
    c0, r0, c1, r1 = _fractional_span(grid, box)
    col0 = max(0, math.floor(c0 + _EDGE_TOLERANCE_PX))
    row0 = max(0, math.floor(r0 + _EDGE_TOLERANCE_PX))
    col1 = min(grid.width, math.ceil(c1 - _EDGE_TOLERANCE_PX))
    row1 = min(grid.height, math.ceil(r1 - _EDGE_TOLERANCE_PX))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _overlap_centre(hsi_grid: Grid, msi_grid: Grid) -> tuple[float, float]:
    """Centre of the common area, in the MSI CRS."""
    box = _bounds_in(hsi_grid, msi_grid.crs)
    left, bottom, right, top = msi_grid.bounds
    x0, x1 = max(box[0], left), min(box[2], right)
    y0, y1 = max(box[1], bottom), min(box[3], top)
    if x1 <= x0 or y1 <= y0:
        raise AlignmentError("The scenes do not overlap.")
    return ((x0 + x1) / 2, (y0 + y1) / 2)


def _fmt_box(box) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in box) + ")"  # 10 digits: UTM northings in full, not 5.80708e+06


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "the given CRS"
