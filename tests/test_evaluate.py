"""Tests of geolift.evaluate: Wald degradations, metric formulas, baselines."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy.signal import convolve2d

from geolift import evaluate as ev
from geolift.errors import GeoliftError, InputError, ModelError

POTSDAM = Path(__file__).resolve().parents[1] / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"


def gaussian_response(wavelengths, centres, fwhms):
    """A Gaussian-SRF response matrix built here, so these tests do not need geolift.srf."""
    sd = np.asarray(fwhms, float)[:, None] / (2 * np.sqrt(2 * np.log(2)))
    curves = np.exp(-0.5 * ((wavelengths[None, :] - np.asarray(centres, float)[:, None]) / sd) ** 2)
    return curves / curves.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def potsdam():
    """Real EnMAP cube (218 good bands) and its wavelengths in nm."""
    with rasterio.open(POTSDAM) as ds:
        cube = ds.read().astype(np.float32)
        tags = [ds.tags(i + 1) for i in range(ds.count)]
    good = np.array([t["bbl"] != "0" for t in tags])
    wavelengths = np.array([float(t["wavelength"]) for t in tags])
    return cube[good], wavelengths[good]


# --------------------------------------------------------------------------- metrics


def test_psnr_of_constant_error_0_1_is_20_db():
    gt = np.full((3, 8, 8), 0.5)
    assert ev.psnr(gt, gt + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert ev.psnr(gt, gt - 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * np.log10(2.0), abs=1e-9)
    assert ev.psnr(gt, gt) == float("inf")
    assert isinstance(ev.psnr(gt, gt + 0.1), float)


def test_psnr_uses_one_mse_over_the_whole_cube():
    gt = np.zeros((2, 4, 4))
    pred = gt.copy()
    pred[0] += 0.1  # band 0 error 0.1, band 1 perfect -> MSE 0.005 overall
    assert ev.psnr(gt, pred) == pytest.approx(10 * np.log10(1 / 0.005), abs=1e-9)


def test_rmse_hand_checked():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[0.3, 0.4], [0.0, 0.0]]])
    assert ev.rmse(gt, pred) == pytest.approx(np.sqrt((0.09 + 0.16) / 4), abs=1e-12)


def test_sam_orthogonal_is_90_parallel_is_0_and_45_between():
    gt = np.array([[1.0], [0.0]])[:, :, None]  # one pixel, spectrum (1, 0)
    assert ev.sam(gt, np.array([[0.0], [2.0]])[:, :, None]) == pytest.approx(90.0)
    assert ev.sam(gt, 3.0 * gt) == pytest.approx(0.0, abs=1e-6)
    assert ev.sam(gt, np.array([[1.0], [1.0]])[:, :, None]) == pytest.approx(45.0)
    two_pixels_gt = np.concatenate([gt, gt], axis=2)
    two_pixels_pred = np.concatenate([3.0 * gt, np.array([[0.0], [1.0]])[:, :, None]], axis=2)
    assert ev.sam(two_pixels_gt, two_pixels_pred) == pytest.approx(45.0)  # mean of 0 and 90


def test_sam_zero_norm_pixels_are_handled():
    gt = np.zeros((3, 1, 2))
    pred = np.zeros((3, 1, 2))
    gt[:, 0, 1] = [1.0, 2.0, 3.0]  # pixel 0: both zero -> 0; pixel 1: prediction zero -> 90
    assert ev.sam(gt, pred) == pytest.approx(45.0)


def test_ergas_hand_computed_two_band_example():
    gt = np.empty((2, 4, 4))
    gt[0], gt[1] = 2.0, 4.0
    pred = gt.copy()
    pred[0] += 0.2  # RMSE 0.2, mean 2 -> relative 0.1
    pred[1] += np.where(np.indices((4, 4)).sum(axis=0) % 2 == 0, 0.8, -0.8)  # RMSE 0.8, mean 4 -> 0.2
    expected = 100 / 4 * np.sqrt((0.1**2 + 0.2**2) / 2)  # = 3.9528
    assert ev.ergas(gt, pred, ratio=4) == pytest.approx(expected, rel=1e-12)
    assert ev.ergas(gt, pred, ratio=2) == pytest.approx(2 * expected, rel=1e-12)


def test_ssim_identical_is_one_and_drops_with_noise():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(np.cumsum(rng.random((2, 40, 40)), axis=1), axis=2)
    image = smooth / smooth.max()
    assert ev.ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    scores = [ev.ssim(image, image + rng.normal(0, s, image.shape)) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_of_two_constant_images_matches_the_formula():
    x, y, c1 = 0.5, 0.4, 0.01**2
    expected = (2 * x * y + c1) / (x * x + y * y + c1)  # variances are 0, so the C2 term is 1
    assert ev.ssim(np.full((1, 20, 20), x), np.full((1, 20, 20), y)) == pytest.approx(expected, rel=1e-9)


def test_nan_pixels_are_excluded_from_every_metric():
    rng = np.random.default_rng(2)
    gt = rng.random((4, 16, 16)) + 0.1
    pred = gt + rng.normal(0, 0.02, gt.shape)
    base = {"RMSE": ev.rmse(gt, pred), "PSNR": ev.psnr(gt, pred), "SAM": ev.sam(gt, pred),
            "ERGAS": ev.ergas(gt, pred, 4)}
    gt_nan, pred_nan = gt.copy(), pred.copy()
    gt_nan[:, 0, 0] = np.nan
    pred_nan[:, 0, 0] = 0.0  # would be a huge error if counted
    gt[:, 0, 0] = pred[:, 0, 0]  # the same data with that pixel perfect, as a reference point
    assert np.isfinite(ev.rmse(gt_nan, pred_nan))
    metrics = ev.all_metrics(gt_nan, pred_nan, ratio=4)
    assert set(metrics) == {"PSNR", "SAM", "SSIM", "ERGAS", "RMSE"}
    assert all(np.isfinite(v) for v in metrics.values())
    # Excluding one of 256 pixels changes the mean error only slightly; counting it would not.
    assert metrics["RMSE"] == pytest.approx(base["RMSE"], rel=0.05)
    assert metrics["SAM"] == pytest.approx(base["SAM"], rel=0.05)
    assert metrics["ERGAS"] == pytest.approx(base["ERGAS"], rel=0.05)


def test_srf_consistency_is_perfect_for_the_msi_made_from_the_cube():
    rng = np.random.default_rng(3)
    cube = rng.random((6, 8, 8))
    R = rng.random((2, 6))
    R /= R.sum(axis=1, keepdims=True)
    msi = np.tensordot(R, cube, axes=1)
    perfect = ev.srf_consistency(cube, msi, R)
    assert perfect["RMSE"] == pytest.approx(0.0, abs=1e-12) and perfect["PSNR"] == float("inf")
    off = ev.srf_consistency(cube + 0.1, msi, R)  # rows sum to 1, so the MSI is off by 0.1 too
    assert off["RMSE"] == pytest.approx(0.1) and off["PSNR"] == pytest.approx(20.0)
    with pytest.raises(ModelError):
        ev.srf_consistency(cube, msi, R[:, :5])


def test_metrics_reject_shape_mismatch():
    with pytest.raises(InputError):
        ev.psnr(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(InputError):
        ev.sam(np.zeros((4, 4)), np.zeros((4, 4)))


# --------------------------------------------------------------------------- PSFs and degradations


@pytest.mark.parametrize("make", [ev.gaussian_psf, ev.moffat_psf, ev.airy_psf])
def test_psf_kernels_sum_to_one_are_symmetric_and_peak_at_the_centre(make):
    kernel = make(3.4, 7)
    assert kernel.shape == (15, 15)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-15)
    np.testing.assert_allclose(kernel, kernel[::-1, :], atol=1e-15)
    np.testing.assert_allclose(kernel, kernel[:, ::-1], atol=1e-15)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (7, 7)


def test_psf_profiles_follow_their_formulas():
    g = ev.gaussian_psf(3.4, 7)
    assert g[7, 9] / g[7, 7] == pytest.approx(np.exp(-4 / (2 * 3.4**2)))
    m = ev.moffat_psf(2.0, 5, beta=3.5)
    assert m[5, 8] / m[5, 5] == pytest.approx((1 + (3 / 2.0) ** 2) ** -3.5)
    # Airy: first dark ring at 3.8317 / (pi * 0.42) = 2.904 sigma -> 5.81 px for sigma 2.
    a = ev.airy_psf(2.0, 10)
    profile = a[10, 10:] / a[10, 10]
    assert profile[6] < 2e-3 < profile[8]  # near-zero at the ring, the first bright ring beyond it
    assert np.all(np.diff(profile[:6]) < 0)


def test_blur_is_same_size_with_a_zero_border():
    kernel = ev.gaussian_psf(3.4, 7)
    ones = np.ones((1, 40, 40))
    blurred = ev.blur(ones, kernel)
    assert blurred.shape == ones.shape and blurred.dtype == np.float32
    assert blurred[0, 20, 20] == pytest.approx(1.0, abs=1e-6)  # far from the edge: unchanged
    # Outside pixels count as 0: the edge keeps only the kernel part that overlaps the image.
    assert blurred[0, 20, 0] == pytest.approx(kernel[:, 7:].sum(), abs=1e-6)  # about 0.56
    assert blurred[0, 0, 0] == pytest.approx(kernel[7:, 7:].sum(), abs=1e-6)  # about 0.31
    assert blurred[0, 0, 0] < blurred[0, 20, 0] < 0.6


def test_blur_is_a_true_convolution_like_convolve2d_same():
    rng = np.random.default_rng(4)
    image, kernel = rng.random((1, 12, 17)), rng.random((5, 3))  # asymmetric kernel: flipping matters
    kernel /= kernel.sum()
    expected = convolve2d(image[0], kernel, mode="same", boundary="fill", fillvalue=0)
    np.testing.assert_allclose(ev.blur(image, kernel)[0], expected, atol=1e-6)


def test_downsample_is_the_block_mean():
    cube = np.arange(2 * 4 * 6, dtype=float).reshape(2, 4, 6)
    small = ev.downsample(cube, 2)
    assert small.shape == (2, 2, 3)
    assert small[0, 0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert small[1, 1, 2] == pytest.approx(cube[1, 2:4, 4:6].mean())
    np.testing.assert_array_equal(ev.downsample(cube, 1), cube.astype(np.float32))
    with pytest.raises(InputError):
        ev.downsample(cube, 4)  # 6 columns are not a multiple of 4
    with pytest.raises(InputError):
        ev.downsample(cube, 0)


def test_noise_reaches_the_requested_snr_in_every_band():
    rng = np.random.default_rng(5)
    cube = rng.random((3, 200, 200)) * np.array([1.0, 0.2, 5.0])[:, None, None]
    noisy = ev.add_noise(cube, 30.0, np.random.default_rng(6))
    noise = noisy.astype(np.float64) - cube
    achieved = 10 * np.log10(np.mean(cube**2, axis=(1, 2)) / np.mean(noise**2, axis=(1, 2)))
    np.testing.assert_allclose(achieved, 30.0, atol=0.1)
    assert np.allclose(np.mean(noise, axis=(1, 2)), 0, atol=5 * noise.std() / 200)
    np.testing.assert_array_equal(ev.add_noise(cube, None, 0), cube.astype(np.float32))


def test_normalize_cube_clips_to_global_percentiles():
    rng = np.random.default_rng(7)
    cube = rng.normal(100, 10, (3, 30, 30))
    cube[1] += 50  # one band brighter: a global (not per-band) scale keeps it brighter
    out = ev.normalize_cube(cube)
    lo, hi = np.percentile(cube, [1, 99])
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[1].mean() > out[0].mean() + 0.3
    np.testing.assert_allclose(out, (np.clip(cube, lo, hi) - lo) / (hi - lo), atol=1e-6)


def test_make_wald_case_shapes_crop_and_noise_free_degradations():
    rng = np.random.default_rng(8)
    cube = rng.random((5, 18, 22)) * 1000
    R = np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 0.2, 0.3, 0.5]])
    case = ev.make_wald_case(cube, R, ratio=4, snr_hsi_db=None, snr_msi_db=None)
    assert case.gt.shape == (5, 16, 20) and case.lr_hsi.shape == (5, 4, 5) and case.hr_msi.shape == (2, 16, 20)
    assert case.ratio == 4 and case.psf.shape == (15, 15)
    np.testing.assert_allclose(case.gt, ev.normalize_cube(cube)[:, :16, :20])
    np.testing.assert_allclose(case.hr_msi, np.tensordot(R, case.gt, axes=1), atol=1e-6)
    np.testing.assert_allclose(case.lr_hsi, ev.downsample(ev.blur(case.gt, ev.gaussian_psf(3.4, 7)), 4), atol=1e-6)


def test_make_wald_case_is_deterministic_by_seed():
    rng = np.random.default_rng(9)
    cube = rng.random((4, 16, 16))
    R = np.full((2, 4), 0.25)
    first, again = ev.make_wald_case(cube, R, seed=42), ev.make_wald_case(cube, R, seed=42)
    other = ev.make_wald_case(cube, R, seed=43)
    np.testing.assert_array_equal(first.lr_hsi, again.lr_hsi)
    np.testing.assert_array_equal(first.hr_msi, again.hr_msi)
    assert not np.array_equal(first.lr_hsi, other.lr_hsi)
    assert not np.array_equal(first.hr_msi, other.hr_msi)


def test_bad_arguments_raise_geolift_errors():
    cube = np.random.default_rng(10).random((4, 16, 16))
    R = np.full((2, 4), 0.25)
    with pytest.raises(InputError):
        ev.make_wald_case(cube, R, ratio=0)
    with pytest.raises(InputError):
        ev.make_wald_case(cube, R, ratio=2.5)
    with pytest.raises(ModelError, match="3 columns"):
        ev.make_wald_case(cube, R[:, :3])
    with pytest.raises(InputError):
        ev.make_wald_case(cube[0], R)
    with pytest.raises(GeoliftError):
        ev.degrade_spectral(cube, np.ones((2, 5)), 40, 0)
    with pytest.raises(InputError):
        ev.gaussian_psf(-1.0, 7)
    with pytest.raises(InputError):
        ev.ergas(cube, cube, ratio=0)


# --------------------------------------------------------------------------- baselines


def test_bicubic_reproduces_a_quadratic_and_a_smooth_function():
    ratio, rows, cols = 4, 48, 64

    def lr_centres(n):
        return (np.arange(n) + 0.5) * ratio - 0.5

    hr_y, hr_x = np.arange(rows)[:, None], np.arange(cols)[None, :]
    quadratic = lambda y, x: 0.002 * y**2 - 0.001 * x * y + 0.01 * x + 0.3  # noqa: E731
    smooth = lambda y, x: np.sin(0.08 * y) * np.cos(0.05 * x)  # noqa: E731
    for function, tolerance in ((quadratic, 1e-5), (smooth, 5e-3)):
        lr = function(lr_centres(rows // ratio)[:, None], lr_centres(cols // ratio)[None, :])[None]
        up = ev.bicubic_upsample(lr, (rows, cols))
        assert up.shape == (1, rows, cols)
        interior = (slice(None), slice(2 * ratio, -2 * ratio), slice(2 * ratio, -2 * ratio))
        assert np.max(np.abs(up - function(hr_y, hr_x)[None])[interior]) < tolerance


def test_bicubic_keeps_nan_local():
    lr = np.ones((1, 8, 8))
    lr[0, 4, 4] = np.nan
    up = ev.bicubic_upsample(lr, (32, 32))
    assert np.isnan(up[0, 17, 17])
    assert np.isfinite(up[0, :8]).all() and np.allclose(up[0, :8], 1.0)


def test_gsa_recovers_a_scene_that_lies_in_the_span_of_the_msi_bands():
    rng = np.random.default_rng(11)
    abundances = rng.random((3, 32, 32))
    endmembers = rng.random((12, 3))
    cube = np.tensordot(endmembers, abundances, axes=1)  # 12 bands, rank 3
    R = rng.random((3, 12))
    R /= R.sum(axis=1, keepdims=True)
    case = ev.make_wald_case(cube, R, ratio=4, snr_hsi_db=None, snr_msi_db=None, normalize=False)
    fused = ev.gsa_fusion(case.lr_hsi, case.hr_msi, 4, psf=case.psf)
    assert ev.psnr(case.gt, fused) > 60
    assert ev.psnr(case.gt, ev.bicubic_upsample(case.lr_hsi, (32, 32))) < 30


def test_gsa_beats_bicubic_on_the_real_potsdam_cube(potsdam):
    cube, wavelengths = potsdam
    R = gaussian_response(wavelengths, centres=[490, 560, 665, 842], fwhms=[65, 35, 30, 115])
    case = ev.make_wald_case(cube, R, ratio=4, seed=42)
    assert case.gt.shape == (218, 64, 128)
    bicubic = ev.all_metrics(case.gt, ev.bicubic_upsample(case.lr_hsi, case.gt.shape[1:]), 4)
    gsa = ev.all_metrics(case.gt, ev.gsa_fusion(case.lr_hsi, case.hr_msi, 4), 4)
    assert gsa["PSNR"] > bicubic["PSNR"] + 1.0
    assert gsa["SAM"] < bicubic["SAM"]
    assert gsa["SSIM"] > bicubic["SSIM"]
    assert gsa["ERGAS"] < bicubic["ERGAS"]


def test_gsa_rejects_mismatched_sizes():
    with pytest.raises(InputError):
        ev.gsa_fusion(np.zeros((5, 8, 8)), np.zeros((2, 30, 32)), 4)
