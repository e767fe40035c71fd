"""Co-registration (geolift.align) on the real Berlin pair and on Wald-protocol misregistrations.

The Berlin pair: simulated EnMAP (30 m, 60 x 80, 177 bands) and HyMap (3.6 m, 494 x 660, 4 bands), both EPSG:32633;
the grids do not nest (30 / 3.6 = 8.33) and the HyMap origin lies 2.4 m west and 1.2 m north of the EnMAP one.
The synthetic LR-MSI is built here with Gaussian responses at the HyMap band centres/FWHM (not geolift.srf).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from geolift.align import (
    MIN_SHIFT_PEAK,
    Grid,
    aggregate_to_grid,
    coverage_mask,
    estimate_shift,
    harmonize,
    overlap,
    pixel_size_m,
    radiometric_agreement,
    resolution_ratio,
    shift_transform,
)
from geolift.errors import AlignmentError, MetadataError

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
HSI_PATH = SAMPLE / "enmap_sim_berlin_30m_177b.tif"
MSI_PATH = SAMPLE / "hymap_berlin_3p6m_4b.tif"


def _read(path):
    """Reflectance cube (NaN = nodata), band wavelengths and FWHM (nm), grid."""
    with rasterio.open(path) as ds:
        cube = ds.read().astype(np.float32)
        cube[cube == ds.nodata] = np.nan
        wavelengths = np.array([float(ds.tags(b)["wavelength"]) for b in ds.indexes])
        fwhm = np.array([float(ds.tags(b)["fwhm"]) for b in ds.indexes])
        return cube * np.float32(1e-4), wavelengths, fwhm, Grid.like(ds)


@pytest.fixture(scope="module")
def berlin():
    hsi, hsi_wl, _, hsi_grid = _read(HSI_PATH)
    msi, msi_wl, msi_fwhm, msi_grid = _read(MSI_PATH)
    sigma = msi_fwhm / (2 * math.sqrt(2 * math.log(2)))
    response = np.exp(-0.5 * ((hsi_wl[None, :] - msi_wl[:, None]) / sigma[:, None]) ** 2)
    response /= response.sum(axis=1, keepdims=True)
    synthetic = np.tensordot(response, hsi, axes=1).astype(np.float32)
    return dict(hsi=hsi, msi=msi, hsi_grid=hsi_grid, msi_grid=msi_grid, synthetic=synthetic)


def _reprojected(cube, grid, crs):
    """``cube`` warped to ``crs`` with rasterio (bilinear), and its new grid."""
    transform, width, height = calculate_default_transform(grid.crs, crs, grid.width, grid.height, *grid.bounds)
    out = np.full((cube.shape[0], height, width), np.nan, np.float32)
    reproject(cube, out, src_transform=grid.transform, src_crs=grid.crs, dst_transform=transform, dst_crs=crs,
              resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
    return out, Grid(crs, transform, width, height)


def _window_mask(shape, window):
    mask = np.zeros(shape, bool)
    mask[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width] = True
    return mask


# ------------------------------------------------------------------------------------------------------ grids
def test_grid_from_dataset_has_bounds_res_and_shape(berlin):
    grid = berlin["hsi_grid"]
    assert grid.crs.to_epsg() == 32633
    assert grid.shape == (80, 60)
    assert grid.res == pytest.approx((30.0, 30.0))
    assert grid.bounds == pytest.approx((383472.37, 5815902.35, 385272.37, 5818302.35))
    assert berlin["msi_grid"].res == pytest.approx((3.6, 3.6))


def test_grid_refuses_missing_crs_and_rotation():
    with pytest.raises(MetadataError, match="coordinate reference system"):
        Grid(None, Affine(30, 0, 0, 0, -30, 0), 10, 10)
    with pytest.raises(AlignmentError, match="Rotated"):
        Grid("EPSG:32633", Affine(30, 1, 0, 0, -30, 0), 10, 10)


def test_shift_transform_moves_grid_by_its_own_pixels():
    transform = Affine(30, 0, 1000, 0, -30, 5000)
    moved = shift_transform(transform, 0.5, -0.25)
    # pixel (r, c) of the result sits where (r + 0.5, c - 0.25) sat
    for row, col in [(0, 0), (3, 7)]:
        assert moved @ (col, row) == pytest.approx(transform @ (col - 0.25, row + 0.5))
    assert moved.c == pytest.approx(1000 - 7.5) and moved.f == pytest.approx(5000 - 15)
    assert shift_transform(moved, -0.5, 0.25).almost_equals(transform)


# ---------------------------------------------------------------------------------------------------- overlap
def test_overlap_berlin_pair_non_integer_ratio(berlin):
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    ov = overlap(hsi_grid, msi_grid)
    # HSI left edge at MSI column 2.4 / 3.6 = 0.67 and top at row 1.2 / 3.6 = 0.33: the first whole MSI pixel inside
    # is (1, 1); the HSI reaches beyond the MSI on the right and bottom, so the window runs to the MSI's edge.
    assert ov.window == Window(1, 1, 493, 659)
    assert ov.transform.almost_equals(msi_grid.transform @ Affine.translation(1, 1))
    assert ov.grid.shape == (659, 493) and ov.grid.crs == msi_grid.crs
    # every HSI pixel touches the MSI (the MSI stops inside the last HSI row and column)
    assert ov.hsi_window == Window(0, 0, 60, 80)
    assert resolution_ratio(hsi_grid, msi_grid) == pytest.approx(30 / 3.6, rel=1e-9)


def test_overlap_of_hsi_subset_is_the_largest_msi_window_inside_it(berlin):
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    sub = hsi_grid.subgrid(Window(10, 15, 30, 40))
    ov = overlap(sub, msi_grid)
    # columns: (302.4 m / 3.6, 1202.4 m / 3.6) = (84.0, 334.0); rows: (451.2 / 3.6, 1651.2 / 3.6) = (125.33, 458.67)
    assert ov.window == Window(84, 126, 250, 332)
    left, bottom, right, top = ov.grid.bounds
    s_left, s_bottom, s_right, s_top = sub.bounds
    assert s_left - 1e-6 <= left and right <= s_right + 1e-6 and s_bottom - 1e-6 <= bottom and top <= s_top + 1e-6
    # one more MSI pixel on a side with slack would stick out of the HSI
    assert top + 3.6 > s_top and bottom - 3.6 < s_bottom
    assert ov.hsi_window == Window(0, 0, 30, 40)
    assert coverage_mask(sub, ov.grid).all()


def test_no_overlap_raises_alignment_error(berlin):
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    far = Grid(hsi_grid.crs, hsi_grid.transform @ Affine.translation(200, 0), hsi_grid.width, hsi_grid.height)
    with pytest.raises(AlignmentError, match="do not overlap"):
        overlap(far, msi_grid)
    elsewhere = Grid("EPSG:4326", Affine(0.0003, 0, 2.35, 0, -0.0003, 48.86), 60, 80)  # Paris
    with pytest.raises(AlignmentError, match="do not overlap"):
        overlap(elsewhere, msi_grid)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32632"])
def test_overlap_and_ratio_across_crs(berlin, crs):
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    window = Window(10, 15, 30, 40)
    sub = hsi_grid.subgrid(window)
    native = overlap(sub, msi_grid).window
    cube = berlin["synthetic"][:, 15:55, 10:40]
    warped, grid = _reprojected(cube, sub, crs)

    ov = overlap(grid, msi_grid)
    assert (_window_mask(msi_grid.shape, native) & ~_window_mask(msi_grid.shape, ov.window)).sum() == 0
    # the exact footprint (valid warped pixels) matches the native window
    covered = np.zeros(msi_grid.shape, bool)
    w = ov.window
    covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = coverage_mask(
        grid, ov.grid, np.isfinite(warped).all(axis=0))
    expected = _window_mask(msi_grid.shape, native)
    assert (covered & expected).sum() / (covered | expected).sum() > 0.95

    # ratio: MSI pixel carried into the HSI CRS independently with pyproj over a 100-pixel baseline
    to_hsi = Transformer.from_crs(msi_grid.crs, crs, always_xy=True)
    cx, cy = 384400.0, 5817000.0
    xs, ys = to_hsi.transform([cx, cx + 360.0, cx], [cy, cy, cy - 360.0])
    u = np.array([xs[1] - xs[0], ys[1] - ys[0]]) / 100
    v = np.array([xs[2] - xs[0], ys[2] - ys[0]]) / 100
    expected_ratio = math.sqrt(abs(grid.transform.determinant) / abs(u[0] * v[1] - u[1] * v[0]))
    ratio = resolution_ratio(grid, msi_grid)
    assert ratio == pytest.approx(expected_ratio, rel=1e-3)
    assert ratio == pytest.approx(30 / 3.6, rel=0.01)

    # and the HR-MSI aggregated onto the foreign grid still matches the warped synthetic image
    observed = aggregate_to_grid(berlin["msi"], msi_grid, grid)
    assert np.all(radiometric_agreement(observed, warped).correlation > 0.85)


def test_pixel_size_in_metres_for_projected_and_geographic(berlin):
    assert pixel_size_m(berlin["hsi_grid"]) == pytest.approx((30.0, 30.0))
    _, grid = _reprojected(berlin["synthetic"], berlin["hsi_grid"], "EPSG:4326")
    lat = grid.transform.f + grid.transform.e * grid.height / 2
    deg = grid.res[0]
    x_m, y_m = pixel_size_m(grid)
    assert x_m == pytest.approx(deg * 111320 * math.cos(math.radians(lat)), rel=5e-3)
    assert y_m == pytest.approx(deg * 111250, rel=5e-3)


# ------------------------------------------------------------------------------------------------ aggregation
def test_aggregating_a_constant_gives_the_constant(berlin):
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    constant = np.full((2,) + msi_grid.shape, 0.37, np.float32)
    out = aggregate_to_grid(constant, msi_grid, hsi_grid)
    assert out.shape == (2, 80, 60) and out.dtype == np.float32
    # the MSI covers only 16 % of the last HSI row and 20 % of the last column: below the 50 % threshold
    assert np.isnan(out[:, -1, :]).all() and np.isnan(out[:, :, -1]).all()
    assert np.isfinite(out[:, :-1, :-1]).all()
    np.testing.assert_allclose(out[:, :-1, :-1], 0.37, rtol=1e-6)


def test_aggregation_equals_block_means_when_grids_nest():
    rng = np.random.default_rng(3)
    src = Grid("EPSG:32633", Affine(3, 0, 400000, 0, -3, 5800000), 60, 40)
    dst = Grid("EPSG:32633", Affine(12, 0, 400000, 0, -12, 5800000), 15, 10)
    data = rng.random((3, 40, 60)).astype(np.float32)
    out = aggregate_to_grid(data, src, dst)
    expected = data.reshape(3, 10, 4, 15, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert aggregate_to_grid(data[0], src, dst).shape == (10, 15)


def test_aggregation_weights_partial_pixels_by_area(berlin):
    # The mean of a linear ramp over a coarse pixel is the ramp at the pixel centre only if fine pixels that straddle
    # the coarse boundary are weighted by the area inside (8.33 fine pixels per coarse pixel here).
    hsi_grid, msi_grid = berlin["hsi_grid"], berlin["msi_grid"]
    x_fine = (np.arange(msi_grid.width) + 0.5) * 3.6 + msi_grid.transform.c - hsi_grid.transform.c
    ramp = np.broadcast_to(x_fine, msi_grid.shape).astype(np.float32)
    out = aggregate_to_grid(ramp, msi_grid, hsi_grid)
    x_coarse = (np.arange(hsi_grid.width) + 0.5) * 30.0
    error = out[:-1, :-1] - x_coarse[None, :-1]
    assert np.abs(error).max() < 0.1  # metres; counting whole fine pixels would be off by up to ~1.5 m


def test_aggregation_nan_threshold():
    src = Grid("EPSG:32633", Affine(1, 0, 0, 0, -1, 1000), 20, 10)
    dst = Grid("EPSG:32633", Affine(10, 0, 0, 0, -10, 1000), 2, 1)
    data = np.ones((1, 10, 20), np.float32)
    data[0, :, 10:] = 2.0
    data[0, :3, :10] = np.nan  # 30 % missing in the first coarse pixel
    data[0, :7, 10:] = np.nan  # 70 % missing in the second
    out = aggregate_to_grid(data, src, dst)
    assert out[0, 0, 0] == pytest.approx(1.0) and np.isnan(out[0, 0, 1])
    lenient = aggregate_to_grid(data, src, dst, min_valid_fraction=0.2)
    assert lenient[0, 0, 1] == pytest.approx(2.0)
    # the part of a coarse pixel beyond the source raster (x from 0 to 20 m) counts as missing
    ones = np.ones((1, 10, 20), np.float32)
    thirty_percent_in = aggregate_to_grid(ones, src, Grid(dst.crs, Affine(10, 0, -7, 0, -10, 1000), 2, 1))
    assert np.isnan(thirty_percent_in[0, 0, 0]) and thirty_percent_in[0, 0, 1] == pytest.approx(1.0)
    seventy_percent_in = aggregate_to_grid(ones, src, Grid(dst.crs, Affine(10, 0, -3, 0, -10, 1000), 2, 1))
    np.testing.assert_allclose(seventy_percent_in, 1.0)


# ------------------------------------------------------------------------------------------- Berlin agreement
def test_berlin_aggregated_hymap_matches_synthetic_enmap(berlin):
    observed = aggregate_to_grid(berlin["msi"], berlin["msi_grid"], berlin["hsi_grid"])
    agreement = radiometric_agreement(observed, berlin["synthetic"])
    assert np.all(agreement.correlation > 0.9), agreement.correlation  # provenance: 0.94-0.96
    assert np.all(agreement.n_pixels == 59 * 79)
    shift = estimate_shift(observed, berlin["synthetic"], berlin["hsi_grid"])
    assert shift.peak > MIN_SHIFT_PEAK
    assert shift.magnitude < 0.25  # the pair is co-registered to a few metres
    assert shift.dx_m == pytest.approx(30 * shift.dx) and shift.dy_m == pytest.approx(30 * shift.dy)
    # harmonising brings the HR-MSI closer to the HSI's radiometry
    before = np.sqrt(np.nanmean((observed - berlin["synthetic"]) ** 2, axis=(1, 2)))
    after = np.sqrt(np.nanmean((harmonize(observed, agreement) - berlin["synthetic"]) ** 2, axis=(1, 2)))
    assert np.all(after < before)
    np.testing.assert_allclose(after, agreement.rmse, rtol=1e-3)


# --------------------------------------------------------------------------------------------- misregistration
WALD_SHIFTS = [(0.3, 0.3), (0.5, -0.4), (-0.6, 0.45), (0.35, -0.55), (-0.45, -0.3), (0.6, 0.6)]


@pytest.mark.parametrize("dy, dx", WALD_SHIFTS)
def test_wald_misregistration_is_estimated_and_corrected(berlin, dy, dx):
    # HyMap is the truth. The "HSI" content is its aggregate on a grid shifted by (dy, dx) HSI pixels, but it is
    # labelled with the nominal grid (a georeferencing error); a gain, offset and noise make it another sensor.
    hsi_grid, msi_grid, msi = berlin["hsi_grid"], berlin["msi_grid"], berlin["msi"]
    rng = np.random.default_rng(7)
    truth = aggregate_to_grid(msi, msi_grid, hsi_grid.shifted(dy, dx))
    synthetic = 1.1 * truth + 0.01 + rng.normal(0, 0.002, truth.shape).astype(np.float32)
    observed = aggregate_to_grid(msi, msi_grid, hsi_grid)

    shift = estimate_shift(observed, synthetic, hsi_grid)
    assert shift.dy == pytest.approx(dy, abs=0.1) and shift.dx == pytest.approx(dx, abs=0.1)
    assert shift.peak > MIN_SHIFT_PEAK and shift.exceeds(0.1)

    corrected = Grid(hsi_grid.crs, shift_transform(hsi_grid.transform, shift.dy, shift.dx), 60, 80)
    residual = estimate_shift(aggregate_to_grid(msi, msi_grid, corrected), synthetic, corrected)
    assert residual.magnitude < 0.05


@pytest.mark.parametrize("dy, dx", [(0.4, 0.5), (-0.5, 0.3)])
def test_real_hsi_with_shifted_geotransform(berlin, dy, dx):
    # Move the real EnMAP's geotransform by (dy, dx): its content now truly lies at (-dy, -dx) of where it is
    # labelled, on top of the pair's own small residual.
    hsi_grid, msi_grid, msi, synthetic = berlin["hsi_grid"], berlin["msi_grid"], berlin["msi"], berlin["synthetic"]
    baseline = estimate_shift(aggregate_to_grid(msi, msi_grid, hsi_grid), synthetic)
    wrong = hsi_grid.shifted(dy, dx)
    shift = estimate_shift(aggregate_to_grid(msi, msi_grid, wrong), synthetic, wrong)
    assert shift.dy == pytest.approx(baseline.dy - dy, abs=0.1)
    assert shift.dx == pytest.approx(baseline.dx - dx, abs=0.1)
    fixed = wrong.shifted(shift.dy, shift.dx)
    assert estimate_shift(aggregate_to_grid(msi, msi_grid, fixed), synthetic).magnitude < 0.1


def test_unrelated_images_give_a_low_peak(berlin):
    observed = aggregate_to_grid(berlin["msi"], berlin["msi_grid"], berlin["hsi_grid"])
    noise = np.random.default_rng(0).normal(size=observed.shape)
    assert estimate_shift(observed, noise).peak < MIN_SHIFT_PEAK
    flipped = berlin["synthetic"][:, ::-1, ::-1].copy()
    assert estimate_shift(observed, flipped).peak < MIN_SHIFT_PEAK


def test_shift_estimation_refuses_bad_input():
    with pytest.raises(AlignmentError, match="same"):
        estimate_shift(np.zeros((2, 20, 20)), np.zeros((3, 20, 20)))
    tiny = np.random.default_rng(0).random((1, 5, 40))
    with pytest.raises(AlignmentError, match="too few valid pixels"):
        estimate_shift(tiny, tiny)


# ------------------------------------------------------------------------------------------------- radiometry
def test_radiometric_agreement_recovers_gain_and_offset_and_harmonize_applies_it():
    rng = np.random.default_rng(5)
    observed = rng.random((3, 30, 40)).astype(np.float32)
    observed[:, 2, 5] = np.nan
    gain, offset = np.array([0.8, 1.25, 1.0]), np.array([0.02, -0.01, 0.05])
    synthetic = gain[:, None, None] * observed + offset[:, None, None]
    synthetic += rng.normal(0, 1e-4, synthetic.shape)
    synthetic[1, 7, 7] = np.nan

    agreement = radiometric_agreement(observed, synthetic)
    np.testing.assert_allclose(agreement.gain, gain, atol=1e-3)
    np.testing.assert_allclose(agreement.offset, offset, atol=1e-3)
    assert np.all(agreement.correlation > 0.999)
    assert list(agreement.n_pixels) == [1199, 1198, 1199]

    # applied to an HR-MSI block: synthetic radiometry, float32, NaN stays NaN
    block = rng.random((3, 50, 70)).astype(np.float32)
    block[0, 10, 10] = np.nan
    out = harmonize(block, agreement)
    assert out.dtype == np.float32 and out.shape == block.shape
    assert np.isnan(out[0, 10, 10]) and np.isfinite(out[1:, 10, 10]).all()
    np.testing.assert_allclose(out[:, 0, 0], gain * block[:, 0, 0] + offset, atol=2e-3)
    with pytest.raises(AlignmentError, match="bands"):
        harmonize(block[:2], agreement)


def test_harmonize_commutes_with_aggregation(berlin):
    # The map is fitted at the HSI scale and applied to HR blocks; being linear, aggregating the harmonised HR-MSI
    # gives the harmonised aggregate, so the HR input matches what training saw.
    observed = aggregate_to_grid(berlin["msi"], berlin["msi_grid"], berlin["hsi_grid"])
    agreement = radiometric_agreement(observed, berlin["synthetic"])
    hr = harmonize(berlin["msi"], agreement)
    np.testing.assert_allclose(aggregate_to_grid(hr, berlin["msi_grid"], berlin["hsi_grid"]),
                               harmonize(observed, agreement), atol=1e-5, equal_nan=True)
