"""Evaluation: Wald-protocol simulation, quality metrics and classic baselines.

Arrays in, arrays out; this module knows nothing of files or of the model.
Images are band-first ``(C, H, W)``; a response matrix ``R`` is ``(m, C)``.

Wald protocol (Wald, Ranchin & Mangolini 1997): a hyperspectral cube serves as
ground truth; a low-resolution HSI and a high-resolution MSI are simulated from it,
fused, and the fused cube is compared with the truth. The degradations follow the
SpectraLift reference protocol (Shah & Duarte 2025, arXiv 2507.13339; official code
``SpectraLift_python/utils.py``): the cube is normalised once (global 1st/99th
percentile clip, scaled to [0, 1]); LR-HSI = per-band PSF blur ("same" size, zero
border) + block average by an integer ratio + white Gaussian noise at a given SNR;
HR-MSI = cube · Rᵀ + noise at its own SNR.

Metrics exclude NaN pixels: a pixel counts only where every band of both images is
finite. Baselines: cubic-convolution upsampling and GSA hypersharpening.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import j1

from geolift.errors import InputError, ModelError
from geolift.interpolation import keys_cubic

__all__ = [
    "WaldCase",
    "normalize_cube",
    "gaussian_psf",
    "moffat_psf",
    "airy_psf",
    "blur",
    "downsample",
    "add_noise",
    "degrade_spatial",
    "degrade_spectral",
    "make_wald_case",
    "rmse",
    "psnr",
    "sam",
    "ssim",
    "ergas",
    "srf_consistency",
    "all_metrics",
    "bicubic_upsample",
    "gsa_fusion",
]

# First zero of J1: the Airy pattern (2·J1(z)/z)² has its first dark ring at z = 3.8317.
_AIRY_FIRST_ZERO = 3.8317059702075125
# Gaussian approximation of the Airy core: sigma ≈ 0.42·λ·N (Zhang, Zerubia & Olivo-Marin 2007,
# Appl. Opt. 46(10), paraxial wide-field case: sigma = 0.21 λ/NA with NA = 1/(2N)).
_AIRY_SIGMA_PER_LAMBDA_N = 0.42


# --------------------------------------------------------------------------- validation


def _as_cube(array, name: str) -> np.ndarray:
    cube = np.asarray(array)
    if cube.ndim != 3:
        raise InputError(f"{name} must be a band-first (bands, rows, cols) array, got shape {cube.shape}.")
    if not np.issubdtype(cube.dtype, np.number):
        raise InputError(f"{name} must hold numbers, got dtype {cube.dtype}.")
    return cube


def _check_ratio(ratio) -> int:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer, float, np.floating)):
        raise InputError(f"ratio must be a whole number of HR pixels per LR pixel, got {ratio!r}.")
    if float(ratio) != int(ratio) or int(ratio) < 1:
        raise InputError(f"ratio must be a whole number >= 1, got {ratio!r}.")
    return int(ratio)


def _check_psf(psf) -> np.ndarray:
    kernel = np.asarray(psf, dtype=np.float64)
    if kernel.ndim != 2 or kernel.size == 0:
        raise InputError(f"psf must be a 2-D kernel, got shape {kernel.shape}.")
    if not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
        raise InputError("psf must be finite with a positive sum.")
    return kernel


def _check_response(R, n_bands: int) -> np.ndarray:
    matrix = np.asarray(R, dtype=np.float64)
    if matrix.ndim != 2:
        raise ModelError(f"R must be an (msi_bands, hsi_bands) matrix, got shape {matrix.shape}.")
    if matrix.shape[1] != n_bands:
        raise ModelError(
            f"R has {matrix.shape[1]} columns but the hyperspectral cube has {n_bands} bands."
        )
    return matrix


def _same_shape(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    a = _as_cube(gt, "gt").astype(np.float64, copy=False)
    b = _as_cube(pred, "pred").astype(np.float64, copy=False)
    if a.shape != b.shape:
        raise InputError(f"gt and pred differ in shape: {a.shape} vs {b.shape}.")
    return a, b


def _valid_pixels(*cubes: np.ndarray) -> np.ndarray:
    """(H, W) mask of pixels where every band of every cube is finite."""
    mask = np.ones(cubes[0].shape[1:], dtype=bool)
    for cube in cubes:
        mask &= np.all(np.isfinite(cube), axis=0)
    return mask


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# --------------------------------------------------------------------------- normalisation


def normalize_cube(cube, low: float = 1, high: float = 99) -> np.ndarray:
    """Clip the whole cube to its global ``low``/``high`` percentiles and scale to [0, 1].

    One pair of percentiles for all bands (not per band), as the SpectraLift reference
    does, so spectral shapes are kept. NaNs are ignored and stay NaN. float32 out.
    """
    data = _as_cube(cube, "cube").astype(np.float64)
    if not 0 <= low < high <= 100:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}.")
    if not np.any(np.isfinite(data)):
        raise InputError("cube has no finite values to normalise.")
    lo, hi = np.nanpercentile(data, [low, high])
    if hi <= lo:
        raise InputError(f"cube is constant between its {low}th and {high}th percentiles; cannot normalise.")
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- PSFs


def _radius_grid(size: int) -> np.ndarray:
    if isinstance(size, bool) or int(size) != size or size < 0:
        raise InputError(f"PSF size (half-width in pixels) must be a whole number >= 0, got {size!r}.")
    offsets = np.arange(-int(size), int(size) + 1, dtype=np.float64)
    return np.hypot(offsets[None, :], offsets[:, None])


def _check_width(value: float, name: str) -> float:
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def gaussian_psf(sigma: float, size: int = 7) -> np.ndarray:
    """Gaussian PSF exp(-r²/2σ²) on integer offsets -size..size, normalised to sum 1.

    ``size`` is the half-width as in the reference code: the kernel is (2·size+1)²,
    e.g. ``gaussian_psf(3.4, 7)`` is the 15 × 15 kernel of the reference protocol.
    """
    sigma = _check_width(sigma, "sigma")
    r = _radius_grid(size)
    kernel = np.exp(-(r**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def moffat_psf(sigma: float, size: int = 7, beta: float = 3.5) -> np.ndarray:
    """Moffat PSF (1 + (r/σ)²)^-β on a (2·size+1)² grid, normalised to sum 1.

    β = 3.5 as in the SpectraLift reference; σ is the Moffat core width α (not a
    Gaussian sigma). Heavier tails than a Gaussian of the same core.
    """
    sigma = _check_width(sigma, "sigma")
    beta = _check_width(beta, "beta")
    r = _radius_grid(size)
    kernel = (1.0 + (r / sigma) ** 2) ** (-beta)
    return kernel / kernel.sum()


def airy_psf(sigma: float, size: int = 7) -> np.ndarray:
    """Optical Airy pattern (2·J1(z)/z)² on a (2·size+1)² grid, normalised to sum 1.

    Width parameter: ``sigma`` is the standard deviation of the Gaussian that best
    approximates the Airy core, sigma ≈ 0.42·λ·N (Zhang et al. 2007), so
    z = π·r/(λN) = π·0.42·r/sigma and the first dark ring lies at ≈ 2.90·sigma pixels.
    That makes ``airy_psf(s)`` comparable in width to ``gaussian_psf(s)``.

    Differs from the SpectraLift reference, whose "Airy" kernel is (2·K1(z)/z)² with
    z = 2.33811·r/σ: K1 is the *modified* Bessel function, which has no rings and
    diverges at r → 0 (the reference sets the centre to 1, below its neighbours).
    This function is the diffraction pattern of a circular aperture instead.
    """
    sigma = _check_width(sigma, "sigma")
    r = _radius_grid(size)
    z = np.pi * _AIRY_SIGMA_PER_LAMBDA_N * r / sigma
    with np.errstate(invalid="ignore", divide="ignore"):
        amplitude = np.where(z > 0, 2.0 * j1(z) / np.where(z > 0, z, 1.0), 1.0)
    kernel = amplitude**2
    return kernel / kernel.sum()


# --------------------------------------------------------------------------- degradations


def blur(cube, psf) -> np.ndarray:
    """Convolve every band with ``psf``, output the same size, zero border.

    Pixels outside the image count as 0 (as ``convolve2d(mode="same")`` in the reference),
    so edges darken: that is part of the protocol. NaN spreads to pixels whose kernel
    footprint touches it. float32 out.
    """
    data = _as_cube(cube, "cube").astype(np.float64)
    kernel = _check_psf(psf)
    out = ndimage.convolve(data, kernel[None, :, :], mode="constant", cval=0.0)
    return out.astype(np.float32)


def downsample(cube, ratio: int) -> np.ndarray:
    """Average non-overlapping ratio × ratio blocks (OpenCV INTER_AREA at integer factors).

    Rows and columns must be multiples of ``ratio``. A block with a NaN gives NaN.
    """
    data = _as_cube(cube, "cube")
    ratio = _check_ratio(ratio)
    n_bands, rows, cols = data.shape
    if rows % ratio or cols % ratio:
        raise InputError(f"image size {rows} × {cols} is not a multiple of the ratio {ratio}.")
    blocks = data.astype(np.float64).reshape(n_bands, rows // ratio, ratio, cols // ratio, ratio)
    return blocks.mean(axis=(2, 4)).astype(np.float32)


def add_noise(cube, snr_db: float | None, rng) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` per band.

    Per band b: noise power = mean(band_b²) / 10^(SNR/10) (mean over finite pixels), so
    every band gets the same SNR. ``rng`` is a ``numpy.random.Generator`` or a seed.
    ``snr_db=None`` returns the cube unchanged (noise-free). float32 out.
    """
    data = _as_cube(cube, "cube").astype(np.float64)
    if snr_db is None:
        return data.astype(np.float32)
    if not np.isfinite(snr_db):
        raise InputError(f"snr_db must be a finite number of decibels or None, got {snr_db!r}.")
    generator = _rng(rng)
    finite = np.isfinite(data)
    squares = np.where(finite, data, 0.0) ** 2
    counts = np.maximum(finite.sum(axis=(1, 2)), 1)
    signal_power = squares.sum(axis=(1, 2)) / counts
    noise_std = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
    noise = generator.standard_normal(data.shape) * noise_std[:, None, None]
    return (data + noise).astype(np.float32)


def degrade_spatial(cube, psf, ratio: int, snr_db: float | None, rng) -> np.ndarray:
    """Simulate the LR-HSI: PSF blur (zero border) → block average by ``ratio`` → noise."""
    return add_noise(downsample(blur(cube, psf), ratio), snr_db, rng)


def degrade_spectral(cube, R, snr_db: float | None, rng) -> np.ndarray:
    """Simulate the HR-MSI: each pixel's spectrum times Rᵀ (m × C), then noise per band."""
    data = _as_cube(cube, "cube").astype(np.float64)
    matrix = _check_response(R, data.shape[0])
    msi = np.tensordot(matrix, data, axes=1)
    return add_noise(msi, snr_db, rng)


@dataclass
class WaldCase:
    """A simulated fusion case: ground truth and the two inputs made from it."""

    gt: np.ndarray  # (C, H, W) normalised truth, H and W multiples of ratio
    lr_hsi: np.ndarray  # (C, H/ratio, W/ratio)
    hr_msi: np.ndarray  # (m, H, W)
    R: np.ndarray  # (m, C) used for the spectral degradation
    ratio: int
    psf: np.ndarray  # kernel used for the spatial degradation


def make_wald_case(
    cube,
    R,
    ratio: int = 4,
    psf=None,
    snr_hsi_db: float | None = 35,
    snr_msi_db: float | None = 40,
    seed: int = 42,
    *,
    normalize: bool = True,
) -> WaldCase:
    """Build a Wald-protocol case from a hyperspectral cube, reproducibly from ``seed``.

    As in the SpectraLift reference the cube is normalised once (``normalize_cube``)
    before both degradations, and the normalised cube is the ground truth. Then it is
    cropped (bottom/right) to multiples of ``ratio``. Default PSF: Gaussian σ 3.4,
    15 × 15; a given PSF is rescaled to sum 1. The HR-MSI noise is drawn first, then the
    LR-HSI noise, from one ``numpy.random.default_rng(seed)``.
    """
    data = _as_cube(cube, "cube")
    ratio = _check_ratio(ratio)
    matrix = _check_response(R, data.shape[0])
    kernel = gaussian_psf(3.4, 7) if psf is None else _check_psf(psf)
    kernel = kernel / kernel.sum()
    gt = normalize_cube(data) if normalize else data.astype(np.float32)
    rows, cols = (gt.shape[1] // ratio) * ratio, (gt.shape[2] // ratio) * ratio
    if rows == 0 or cols == 0:
        raise InputError(
            f"cube of {data.shape[1]} × {data.shape[2]} pixels is smaller than one {ratio} × {ratio} block."
        )
    gt = np.ascontiguousarray(gt[:, :rows, :cols])
    generator = np.random.default_rng(seed)
    hr_msi = degrade_spectral(gt, matrix, snr_msi_db, generator)
    lr_hsi = degrade_spatial(gt, kernel, ratio, snr_hsi_db, generator)
    return WaldCase(gt=gt, lr_hsi=lr_hsi, hr_msi=hr_msi, R=matrix, ratio=ratio, psf=kernel)


# --------------------------------------------------------------------------- metrics


def rmse(gt, pred) -> float:
    """Root mean square error over all elements of valid pixels: sqrt(mean((gt - pred)²))."""
    a, b = _same_shape(gt, pred)
    mask = _valid_pixels(a, b)
    if not mask.any():
        return float("nan")
    return float(np.sqrt(np.mean((a[:, mask] - b[:, mask]) ** 2)))


def psnr(gt, pred, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of the whole cube in dB.

    PSNR = 10·log10(data_range² / MSE), MSE = mean((gt - pred)²) over all bands and
    valid pixels at once (one MSE for the cube, not a mean of per-band PSNRs).
    ``data_range`` is 1 for normalised data. Identical cubes give +inf.
    """
    error = rmse(gt, pred)
    if not np.isfinite(error):
        return float("nan")
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error**2))


def sam(gt, pred) -> float:
    """Spectral angle mapper: mean over valid pixels of the angle between spectra, in degrees.

    angle = arccos(<x, y> / (|x|·|y|)) with the cosine clipped to [-1, 1]. Zero-norm
    spectra have no direction: a pixel where both are zero counts 0°, where only one
    is zero it counts 90° (as wrong as a non-negative spectrum can be).
    """
    a, b = _same_shape(gt, pred)
    mask = _valid_pixels(a, b)
    if not mask.any():
        return float("nan")
    x, y = a[:, mask], b[:, mask]
    norm_x, norm_y = np.linalg.norm(x, axis=0), np.linalg.norm(y, axis=0)
    denominator = norm_x * norm_y
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(denominator > 0, np.sum(x * y, axis=0) / np.where(denominator > 0, denominator, 1.0), 0.0)
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    angles = np.where((norm_x == 0) & (norm_y == 0), 0.0, angles)
    return float(np.mean(angles))


def ssim(gt, pred, data_range: float = 1.0) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004), per band, averaged.

    Local statistics under an 11 × 11 Gaussian window (σ = 1.5, normalised):
    μx, μy, σx² = w*x² - μx², σy², σxy = w*(xy) - μxμy, and
    SSIM = ((2μxμy + C1)(2σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2)),
    C1 = (0.01·L)², C2 = (0.03·L)², L = ``data_range``. The map is averaged over
    windows that lie inside the image (5-pixel border dropped, as Wang's 'valid'
    filtering; images smaller than 11 px keep every pixel) and over valid pixels;
    invalid pixels are set to 0 in both images before filtering.
    """
    a, b = _same_shape(gt, pred)
    mask = _valid_pixels(a, b)
    if not mask.any():
        return float("nan")
    a = np.where(mask, a, 0.0)
    b = np.where(mask, b, 0.0)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    radius = 5

    def window(image: np.ndarray) -> np.ndarray:
        # sigma 1.5, truncate 3.5 -> radius int(3.5·1.5 + 0.5) = 5 -> an 11 × 11 normalised kernel
        return ndimage.gaussian_filter(image, sigma=(0, 1.5, 1.5), truncate=3.5, mode="reflect")

    mu_x, mu_y = window(a), window(b)
    var_x = window(a * a) - mu_x**2
    var_y = window(b * b) - mu_y**2
    cov_xy = window(a * b) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    keep = mask.copy()
    rows, cols = keep.shape
    if rows > 2 * radius and cols > 2 * radius:
        inner = np.zeros_like(keep)
        inner[radius : rows - radius, radius : cols - radius] = True
        if (keep & inner).any():
            keep &= inner
    return float(np.mean(ssim_map[:, keep]))


def ergas(gt, pred, ratio: float) -> float:
    """ERGAS (Wald 2000): 100/ratio · sqrt(mean_b (RMSE_b / μ_b)²).

    RMSE_b is band b's RMSE, μ_b the mean of the ground-truth band b, over valid pixels.
    Ratio convention: ``ratio`` = HR pixels per LR pixel side (4 for a 4× fusion), i.e.
    Wald's h/l (HR pixel size / LR pixel size) = 1/ratio. Bands whose ground-truth mean
    is 0 are left out (relative error undefined). Lower is better; 0 is perfect.
    """
    try:
        ratio_value = float(ratio)
    except (TypeError, ValueError):
        ratio_value = float("nan")
    if isinstance(ratio, bool) or not np.isfinite(ratio_value) or ratio_value <= 0:
        raise InputError(f"ratio must be a positive number, got {ratio!r}.")
    a, b = _same_shape(gt, pred)
    mask = _valid_pixels(a, b)
    if not mask.any():
        return float("nan")
    x, y = a[:, mask], b[:, mask]
    band_rmse = np.sqrt(np.mean((x - y) ** 2, axis=1))
    band_mean = np.mean(x, axis=1)
    usable = band_mean != 0
    if not usable.any():
        return float("nan")
    relative = (band_rmse[usable] / band_mean[usable]) ** 2
    return float(100.0 / ratio_value * np.sqrt(np.mean(relative)))


def srf_consistency(fused, hr_msi, R, data_range: float = 1.0) -> dict[str, float]:
    """No-reference check: how well the fused cube, seen through R, reproduces the HR-MSI.

    Returns ``{"RMSE": rmse(fused·Rᵀ, hr_msi), "PSNR": psnr(fused·Rᵀ, hr_msi, data_range)}``.
    High PSNR means spectral consistency with the MSI (not spectral correctness).
    """
    cube = _as_cube(fused, "fused").astype(np.float64)
    msi = _as_cube(hr_msi, "hr_msi").astype(np.float64)
    matrix = _check_response(R, cube.shape[0])
    if msi.shape != (matrix.shape[0],) + cube.shape[1:]:
        raise InputError(
            f"hr_msi has shape {msi.shape}, expected {(matrix.shape[0],) + cube.shape[1:]} from fused and R."
        )
    simulated = np.tensordot(matrix, cube, axes=1)
    return {"RMSE": rmse(msi, simulated), "PSNR": psnr(msi, simulated, data_range)}


def all_metrics(gt, pred, ratio: float, data_range: float = 1.0) -> dict[str, float]:
    """PSNR (dB), SAM (degrees), SSIM, ERGAS and RMSE of ``pred`` against ``gt``."""
    return {
        "PSNR": psnr(gt, pred, data_range),
        "SAM": sam(gt, pred),
        "SSIM": ssim(gt, pred, data_range),
        "ERGAS": ergas(gt, pred, ratio),
        "RMSE": rmse(gt, pred),
    }


# --------------------------------------------------------------------------- baselines


def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation weights with pixel-area alignment and replicated edges."""
    position = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(position).astype(int)
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for tap in range(-1, 3):
        index = base + tap
        np.add.at(weights, (rows, np.clip(index, 0, n_in - 1)), keys_cubic(position - index))
    return weights


def bicubic_upsample(lr_hsi, out_shape: tuple[int, int]) -> np.ndarray:
    """Per-band cubic-convolution interpolation (Keys 1981, a = -0.5) to ``out_shape``.

    Pixel-area geometry: pixels are squares, so LR pixel i covers HR pixels
    [i·r, (i+1)·r) and its centre sits at (i + 0.5)·r - 0.5 in HR pixel coordinates
    (r = out/in per axis, any real factor). Edges are replicated. Separable: rows then
    columns. A NaN LR pixel makes NaN the HR pixels whose 4 × 4 support reaches it.
    Meant for upsampling (no anti-alias filter when shrinking). float32 out.
    """
    data = _as_cube(lr_hsi, "lr_hsi").astype(np.float64)
    if len(out_shape) != 2 or min(int(out_shape[0]), int(out_shape[1])) < 1:
        raise InputError(f"out_shape must be (rows, cols) of positive sizes, got {out_shape!r}.")
    rows, cols = int(out_shape[0]), int(out_shape[1])
    weights_y = _cubic_matrix(data.shape[1], rows)
    weights_x = _cubic_matrix(data.shape[2], cols)
    missing = ~np.isfinite(data)
    out = np.einsum("Yy,cyx,Xx->cYX", weights_y, np.where(missing, 0.0, data), weights_x, optimize=True)
    if missing.any():
        reach = np.einsum(
            "Yy,cyx,Xx->cYX", (weights_y != 0).astype(float), missing.astype(float), (weights_x != 0).astype(float),
            optimize=True,
        )
        out[reach > 0] = np.nan
    return out.astype(np.float32)


def gsa_fusion(lr_hsi, hr_msi, ratio: int, psf=None) -> np.ndarray:
    """GSA hypersharpening: a classic component-substitution fusion baseline.

    Follows Aiazzi, Baronti & Selva (2007), "Improving component substitution
    pansharpening through multivariate regression of MS+Pan data", IEEE TGRS 45(10),
    extended to hypersharpening as in Selva, Aiazzi, Butera, Chiarantini & Baronti
    (2015), "Hyper-sharpening: a first approach on SIM-GA data", IEEE JSTARS 8(6):

    1. MSI_L = the HR-MSI brought to the LR grid (block average, or ``psf`` blur + block
       average when the HSI's PSF is known, which matches the MTF as in the papers).
    2. For each HSI band k, least squares at low resolution: HSI_k ≈ Σ_i w_ki·MSI_L,i + b_k.
    3. Synthetic HR intensity P_k = Σ_i w_ki·MSI_i + b_k; its low-pass version
       P_k^L = the same combination of MSI_L, upsampled like the HSI.
    4. Fused_k = HSI~_k + g_k·(P_k - P_k^L), HSI~ = ``bicubic_upsample(lr_hsi)``,
       gain g_k = cov(HSI~_k, P_k^L) / var(P_k^L) (the GSA injection gain).

    ``hr_msi`` must be exactly ``ratio`` times the LR-HSI size. NaN pixels are left
    out of the regression and come out NaN. float32 out.
    """
    lr = _as_cube(lr_hsi, "lr_hsi").astype(np.float64)
    msi = _as_cube(hr_msi, "hr_msi").astype(np.float64)
    ratio = _check_ratio(ratio)
    expected = (lr.shape[1] * ratio, lr.shape[2] * ratio)
    if msi.shape[1:] != expected:
        raise InputError(
            f"hr_msi is {msi.shape[1]} × {msi.shape[2]} pixels but lr_hsi × ratio {ratio} is "
            f"{expected[0]} × {expected[1]}."
        )
    msi_low = downsample(msi if psf is None else blur(msi, psf), ratio).astype(np.float64)

    n_msi = msi.shape[0]
    valid_low = _valid_pixels(lr, msi_low)
    if valid_low.sum() <= n_msi + 1:
        raise InputError(f"too few valid low-resolution pixels ({int(valid_low.sum())}) for the GSA regression.")
    design = np.vstack([msi_low[:, valid_low], np.ones(int(valid_low.sum()))]).T  # (n, m + 1)
    weights, *_ = np.linalg.lstsq(design, lr[:, valid_low].T, rcond=None)  # (m + 1, C)

    upsampled = bicubic_upsample(lr, expected).astype(np.float64)
    msi_low_up = bicubic_upsample(msi_low, expected).astype(np.float64)
    intensity = np.tensordot(weights[:n_msi].T, msi, axes=1) + weights[n_msi][:, None, None]
    intensity_low = np.tensordot(weights[:n_msi].T, msi_low_up, axes=1) + weights[n_msi][:, None, None]

    valid_high = _valid_pixels(upsampled, intensity_low)
    x = intensity_low[:, valid_high]
    y = upsampled[:, valid_high]
    x_centred = x - x.mean(axis=1, keepdims=True)
    variance = np.mean(x_centred**2, axis=1)
    covariance = np.mean(x_centred * (y - y.mean(axis=1, keepdims=True)), axis=1)
    gains = np.where(variance > 0, covariance / np.where(variance > 0, variance, 1.0), 0.0)
    fused = upsampled + gains[:, None, None] * (intensity - intensity_low)
    return fused.astype(np.float32)
