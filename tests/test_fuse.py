"""The fusion pipeline as a library (``geolift.fuse``): real files in, a georeferenced HR-HSI GeoTIFF out.

What the pipeline must prove without the command line: ENVI and GeoTIFF inputs give the same result,
scenes in different CRSs fuse onto the HR-MSI grid, the tile-streamed output equals an in-memory prediction, a
deliberate misregistration is found and corrected, real EnMAP L2A files (unsorted wavelengths, bad bands) work, and
a failed write leaves nothing behind. Training is kept short (100-300 steps); quality claims are relative (to the
native case, to bicubic) so they do not depend on the training length.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import read_potsdam_cube, write_tif
from rasterio.warp import Resampling, calculate_default_transform, reproject

from geolift import align, evaluate, refine, srf
from geolift.fuse import FuseOptions, FuseReport, fuse_files, prepare_fusion, write_fusion

POTSDAM_CUBE = Path(__file__).resolve().parents[1] / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BERLIN_STEPS = 100
WALD_STEPS = 300


# --------------------------------------------------------------------------------------------------- helpers
def fused_quality(wald, path):
    """PSNR (dB) and SAM (degrees) of a fused GeoTIFF against the Wald ground truth, and its valid pixel count.

    The output lies on a window of the HR grid; the truth is cut to that window from the geotransforms.
    """
    with rasterio.open(path) as ds:
        fused = ds.read().astype(np.float32)
        transform = ds.transform
    col = (transform.c - wald.hr_transform.c) / wald.hr_transform.a
    row = (transform.f - wald.hr_transform.f) / wald.hr_transform.e
    assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)
    col, row = int(round(col)), int(round(row))
    gt = wald.gt[:, row:row + fused.shape[1], col:col + fused.shape[2]]
    valid = int(np.isfinite(fused).all(axis=0).sum())
    return evaluate.psnr(gt, fused), evaluate.sam(gt, fused), valid


def in_memory_prediction(plan):
    """The whole output window predicted in one call of the fitted model, masked to the HSI footprint, plus the
    plan's consistency correction (when its preset has one) computed for the whole window in one call too."""
    msi = plan.msi.read(window=plan.output.window, bands=plan.msi_band_indices)
    covered = align.coverage_mask(plan.hsi_grid, plan.grid, plan.hsi_valid)
    msi[:, ~covered] = np.nan
    x0 = plan.model.predict(msi, consistency=False)
    if plan.correction is None:
        return x0
    return np.clip(x0 + refine.correction_for_tile(plan.correction, x0, 0, 0), *plan.model.output_range)


def plan_copy(plan, **options):
    """The same fitted plan with other write options and its own report (write_fusion fills the report)."""
    return replace(plan, options=replace(plan.options, **options), report=replace(plan.report))


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def berlin_plan(berlin):
    """The Berlin GeoTIFF pair prepared and fitted once (non-integer ratio 8.33, offset origins)."""
    return prepare_fusion(berlin.hsi_tif, berlin.msi_tif, FuseOptions(steps=BERLIN_STEPS, seed=0))


@pytest.fixture(scope="module")
def wald_native(wald, tmp_path_factory):
    """The Wald case fused as written (HSI and MSI co-registered, same CRS): the reference for quality."""
    out = tmp_path_factory.mktemp("wald_native") / "native.tif"
    report = fuse_files(wald.hsi, wald.msi, out, FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0))
    return report, out, fused_quality(wald, out)


@pytest.fixture(scope="module")
def wald_native_network(wald, tmp_path_factory):
    """The co-registered Wald case fused with the network alone (the faithful preset, no consistency step)."""
    out = tmp_path_factory.mktemp("wald_native_network") / "native.tif"
    report = fuse_files(wald.hsi, wald.msi, out,
                        FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0, preset="spectralift"))
    return report, out, fused_quality(wald, out)


# ----------------------------------------------------------------------------------------------------- tests
def test_envi_and_geotiff_inputs_give_the_same_fusion(berlin, berlin_plan):
    # The gzip-compressed ENVI originals (HSI given by its .hdr, MSI by its data file) and their GeoTIFF copies
    # must lead to the same grid, shift, training set and, with the same seed, the same predictions.
    envi = prepare_fusion(berlin.hsi_envi_hdr, berlin.msi_envi, FuseOptions(steps=BERLIN_STEPS, seed=0))
    tif = berlin_plan
    assert envi.hsi.count == tif.hsi.count == 177
    np.testing.assert_allclose(envi.hsi.wavelengths_nm, tif.hsi.wavelengths_nm, rtol=1e-12)
    assert envi.grid == tif.grid
    assert envi.hsi_grid == tif.hsi_grid
    assert envi.report.shift_px == tif.report.shift_px
    assert envi.report.training_pixels == tif.report.training_pixels == 60 * 80
    np.testing.assert_allclose(envi.response, tif.response, rtol=1e-6, atol=1e-9)
    for window in (rasterio.windows.Window(0, 0, 64, 64), rasterio.windows.Window(300, 500, 100, 80)):
        from_envi, _ = envi.predict_window(window)
        from_tif, _ = tif.predict_window(window)
        assert np.isfinite(from_tif).all()
        # reflectance x 10000 units: far below one int16 step
        np.testing.assert_allclose(from_envi, from_tif, rtol=0, atol=1e-2)


@pytest.mark.slow
@pytest.mark.reproducible
@pytest.mark.parametrize("dtype, tile", [("float32", 96), ("int16", 256)])
def test_tile_streamed_output_equals_in_memory_prediction(berlin_plan, tmp_path, dtype, tile):
    # 96 px tiles do not divide 494 x 660, so partial edge tiles are exercised too.
    plan = plan_copy(berlin_plan, dtype=dtype, tile_size=tile)
    out = tmp_path / f"streamed_{dtype}.tif"
    write_fusion(plan, out)
    expected = in_memory_prediction(plan)  # (177 good bands, 660, 494)
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == dtype
        assert ds.block_shapes[0] == (tile, tile)
        assert ds.profile["tiled"]
        assert (ds.height, ds.width) == expected.shape[1:]
        streamed = ds.read(masked=True).astype(np.float64)
        scale, offset = ds.scales[0], ds.offsets[0]
    streamed = np.ma.filled(streamed * scale + offset, np.nan)[plan.hsi.good_bands]
    assert np.array_equal(np.isnan(streamed), np.isnan(expected))
    if dtype == "float32":
        np.testing.assert_array_equal(streamed.astype(np.float32), expected)
    else:  # int16 stores round((value - offset) / scale): within half a step of the float prediction
        assert np.nanmax(np.abs(streamed - expected)) <= 0.5 * scale + 1e-6


@pytest.mark.parametrize("hsi_crs", ["EPSG:4326", "EPSG:32632"])
def test_hsi_in_another_crs_fuses_onto_the_msi_grid(wald, wald_native_network, write_raster, tmp_path, hsi_crs):
    # The LR-HSI is reprojected (bilinear) to geographic coordinates or to the neighbouring UTM zone, the HR-MSI
    # stays in UTM 33N. The output must be on the MSI grid, and quality close to the co-registered case (the
    # reprojection itself resamples the LR-HSI, so it cannot be identical).
    lr = wald.lr_hsi.astype(np.float32)
    rows, cols = lr.shape[1:]
    left, top = wald.lr_transform.c, wald.lr_transform.f
    bounds = (left, top + wald.lr_transform.e * rows, left + wald.lr_transform.a * cols, top)
    transform, width, height = calculate_default_transform(wald.crs, hsi_crs, cols, rows, *bounds)
    warped = np.full((lr.shape[0], height, width), np.nan, np.float32)
    reproject(lr, warped, src_transform=wald.lr_transform, src_crs=wald.crs, dst_transform=transform,
              dst_crs=hsi_crs, resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
    hsi = write_raster(tmp_path / "hsi_other_crs.tif", warped, crs=hsi_crs, transform=transform,
                       wavelengths=wald.wavelengths, fwhm=wald.fwhm, nodata=float("nan"))
    out = tmp_path / "fused.tif"

    report = fuse_files(hsi, wald.msi, out, FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0))

    # Across CRSs the default preset's consistency step is skipped (see test_pipeline_refine.py), so the
    # co-registered reference is the same recipe without it: the faithful preset's network output.
    assert not report.refined and "different CRSs" in report.refine_note
    with rasterio.open(out) as ds:
        assert ds.crs == wald.crs
        assert (ds.transform.a, ds.transform.e) == (wald.hr_transform.a, wald.hr_transform.e)
    assert report.hsi_crs == hsi_crs and report.msi_crs == wald.crs.to_string()
    hsi_pixel_m = align.pixel_size_m(align.Grid(hsi_crs, transform, width, height))  # the warped pixel, in metres
    assert report.resolution_ratio == pytest.approx(np.sqrt(np.prod(hsi_pixel_m)) / wald.hr_transform.a, rel=0.02)
    psnr, sam, valid = fused_quality(wald, out)  # also checks the origin is on the MSI pixel grid
    native_psnr, native_sam, native_valid = wald_native_network[2]
    assert abs(psnr - native_psnr) < 0.5
    assert sam < native_sam + 1.0
    assert valid >= 0.95 * native_valid  # only the blurred edge of the reprojected footprint is lost


def test_misregistration_is_found_and_corrected(wald, wald_native, write_raster, tmp_path):
    # Move the LR-HSI geotransform by +0.4 columns and -0.5 rows of its own pixels. The content then truly lies
    # 0.4 px left of and 0.5 px below where the new geotransform says, i.e. (dy, dx) = (+0.5, -0.4) in align.py's
    # convention ("where the HSI's content truly lies relative to where its geotransform puts it").
    true_dy, true_dx = 0.5, -0.4
    shifted = write_raster(tmp_path / "hsi_shifted.tif", wald.lr_hsi.astype(np.float32), crs=wald.crs,
                           transform=wald.lr_transform @ Affine.translation(0.4, -0.5),
                           wavelengths=wald.wavelengths, fwhm=wald.fwhm)
    options = FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0)

    aligned = fuse_files(shifted, wald.msi, tmp_path / "aligned.tif", options)
    unaligned = fuse_files(shifted, wald.msi, tmp_path / "unaligned.tif", replace(options, align=False))
    native_report, _, (native_psnr, _, native_valid) = wald_native

    assert native_report.shift_px == pytest.approx((0.0, 0.0), abs=0.05)
    assert not native_report.shift_applied
    assert aligned.shift_px == pytest.approx((true_dy, true_dx), abs=0.1)
    assert aligned.shift_applied
    assert aligned.shift_peak > 0.9

    # Pure SpectraLift predicts pixel by pixel from the MSI, and training uses the LR-HSI alone, so the fitted
    # model is the same whatever the geotransform; a misregistration shows in the footprint (which output pixels
    # get a value) and in the MSI-vs-HSI comparison that drives --harmonize. After the correction, the footprint is
    # the native one again (within one MSI column/row of the residual), quality is that of the native case, and
    # the band agreement is restored, while without the correction it drops.
    psnr, _, valid = fused_quality(wald, tmp_path / "aligned.tif")
    assert abs(psnr - native_psnr) < 0.3
    assert valid >= native_valid - 128 - 64
    _, _, unaligned_valid = fused_quality(wald, tmp_path / "unaligned.tif")
    assert unaligned_valid < valid

    def correlations(report: FuseReport) -> np.ndarray:
        return np.array([row["correlation"] for row in report.band_agreement])

    native_r, aligned_r, unaligned_r = map(correlations, (native_report, aligned, unaligned))
    assert np.all(aligned_r > native_r - 0.01)
    assert np.all(unaligned_r < aligned_r - 0.02)


def test_wald_case_beats_bicubic_and_writes_wavelengths(wald, wald_native):
    report, out, (psnr, sam, valid) = wald_native
    bicubic = evaluate.bicubic_upsample(wald.lr_hsi, wald.gt.shape[1:])
    assert valid == wald.gt.shape[1] * wald.gt.shape[2]
    assert psnr > evaluate.psnr(wald.gt, bicubic) + 5.0
    assert sam < evaluate.sam(wald.gt, bicubic)
    assert report.msi_bands == ["B2", "B3", "B4", "B8"]  # from the MSI's band descriptions
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32"  # float HSI -> float output by default
        wavelengths = [float(ds.tags(i + 1)["wavelength"]) for i in range(ds.count)]
        assert ds.tags(1)["wavelength_units"] == "Nanometers"
        assert "fwhm" in ds.tags(1)
    np.testing.assert_allclose(wavelengths, wald.wavelengths, rtol=1e-6)
    # an ordinary, shareable file (not mkstemp's private 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask


def test_enmap_l2a_with_unsorted_wavelengths_and_bad_bands(write_raster, tmp_path):
    # The real EnMAP L2A cube lists its bands in detector order (VNIR up to 993 nm, then SWIR from 902 nm) and
    # flags 6 water-vapour bands bbl=0. The MSI is simulated from it in the same units (reflectance x 10000) on a
    # 2x finer grid. Bad bands must stay out of training and come out as nodata; wavelengths keep file order.
    with rasterio.open(POTSDAM_CUBE) as ds:
        cube = ds.read().astype(np.float32)
        band_tags = [ds.tags(i + 1) for i in range(ds.count)]
        crs, transform = ds.crs, ds.transform
    wavelengths = np.array([float(t["wavelength"]) for t in band_tags])
    fwhm = np.array([float(t["fwhm"]) for t in band_tags])
    good = np.array([t["bbl"] == "1" for t in band_tags])
    assert not np.all(np.diff(wavelengths) > 0) and (~good).sum() == 6
    order = np.argsort(wavelengths[good])
    R_sorted = srf.response_matrix("sentinel2a", ["B2", "B3", "B4", "B8"], wavelengths[good][order],
                                   fwhm_nm=fwhm[good][order])
    R = np.empty_like(R_sorted)
    R[:, order] = R_sorted
    msi_lr = np.tensordot(R, cube[good], axes=1).astype(np.float32)
    msi = write_raster(tmp_path / "s2_15m.tif", np.repeat(np.repeat(msi_lr, 2, axis=1), 2, axis=2), crs=crs,
                       transform=transform @ Affine.scale(0.5), descriptions=["B02", "B03", "B04", "B08"])
    out = tmp_path / "enmap_fused.tif"

    report = fuse_files(POTSDAM_CUBE, msi, out, FuseOptions(sensor="sentinel2", steps=100, seed=0, members=1))

    assert report.hsi_bands == 224 and report.bad_bands == 6
    assert report.resolution_ratio == pytest.approx(2.0)
    with rasterio.open(out) as ds:
        assert ds.count == 224
        assert ds.dtypes[0] == "int16"  # integer HSI -> int16 in the HSI's units by default
        fused = ds.read(masked=True)
        out_wavelengths = np.array([float(ds.tags(i + 1)["wavelength"]) for i in range(ds.count)])
        out_bbl = np.array([ds.tags(i + 1)["bbl"] == "1" for i in range(ds.count)])
    np.testing.assert_allclose(out_wavelengths, wavelengths, rtol=1e-6)
    assert np.array_equal(out_bbl, good)
    assert fused.mask[~good].all()
    assert not fused.mask[good].any()
    # Each fused 2 x 2 block came from one MSI value: compare with the cube on the HSI grid.
    fused_lr = fused.data[good].astype(np.float64)[:, ::2, ::2]
    truth = cube[good].astype(np.float64)
    # 34.8 dB with 100 steps; the scene's mean spectrum everywhere scores 22 dB.
    assert evaluate.psnr(truth, fused_lr, data_range=10000.0) > 30.0


@pytest.mark.slow
@pytest.mark.reproducible
def test_pass_two_reads_pass_one_network_output_from_the_scratch_bit_for_bit(berlin, tmp_path, leftovers):
    # The default preset predicts every pixel in pass 1; with the scratch, pass 2 reads those predictions instead
    # of predicting again. The output must be the same bits as without it, also with tiles that straddle pass 1's
    # 512-px windows (384 px), and nothing may be left beside the output.
    options = FuseOptions(steps=BERLIN_STEPS, seed=0, dtype="float32", members=1)  # the scratch's claim: one network
    runs = {"none": replace(options, scratch="none"), "auto": options, "straddling": replace(options, tile_size=384),
            "own folder": replace(options, scratch=str(tmp_path))}
    reports, data = {}, {}
    for name, opts in runs.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        reports[name] = fuse_files(berlin.hsi_tif, berlin.msi_tif, folder / "fused.tif", opts)
        with rasterio.open(folder / "fused.tif") as ds:
            data[name] = ds.read()
        assert leftovers(folder) == []
    assert leftovers(tmp_path) == []
    assert reports["none"].scratch_bytes == 0
    for report in reports.values():  # the CPU of every thread over each stage: more than none, at most every core
        for cpu, wall in ((report.refine_cpu_seconds, report.refine_seconds),
                          (report.write_cpu_seconds, report.write_seconds)):
            assert 0.0 < cpu <= os.cpu_count() * wall + 0.1
    for name in ("auto", "straddling", "own folder"):
        assert reports[name].refined
        assert reports[name].scratch_bytes == 177 * 660 * 494 * 4
        np.testing.assert_array_equal(data[name], data["none"])


def test_small_tiles_predict_again_instead_of_reading_the_scratch(wald, tmp_path):
    # A 16-px tile would read whole 64-row strips of 512-px windows: far more than it needs.
    report = fuse_files(wald.hsi, wald.msi, tmp_path / "fused.tif",
                        FuseOptions(sensor="sentinel2", steps=20, tile_size=16))
    assert report.refined and report.scratch_bytes == 0


def test_failed_write_leaves_no_output_and_no_temporary_file(wald, tmp_path, leftovers):
    out = tmp_path / "fused.tif"

    def interrupt_while_writing(done, total, stage):
        # the write stage's second half is the GeoTIFF being written (the first is the consistency step's pass 1)
        if stage == "write" and done == min(total, total // 2 + 2):  # one 256-px tile: after it, before closing
            raise KeyboardInterrupt

    for tile in (16, 256):  # without and with the consistency step's scratch (see the test above)
        with pytest.raises(KeyboardInterrupt):
            fuse_files(wald.hsi, wald.msi, out, FuseOptions(sensor="sentinel2", steps=20, tile_size=tile),
                       progress=interrupt_while_writing)
        assert not out.exists()
        assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------- the QA layer
def test_novelty_lights_up_on_a_material_only_the_hr_msi_shows(tmp_path):
    """Plant a material the LR-HSI never shows (bright blue and red, dark green and NIR) in the HR-MSI of a Wald
    case: its pixels are far outside what the network was trained on; the rest of the scene is not."""
    from geolift import qa

    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    bands = ["B2", "B3", "B4", "B8"]
    R = srf.response_matrix("sentinel2a", bands, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=42)
    msi = case.hr_msi.astype(np.float32)
    msi[:, 20:28, 60:68] = np.array([0.5, 0.08, 0.5, 0.06], np.float32)[:, None, None]
    msi[:, 40:44, 10:14] = np.nan  # no MSI data here
    hsi_path = write_tif(tmp_path / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs,
                         transform=transform @ Affine.scale(4), wavelengths=wavelengths, fwhm=fwhm)
    msi_path = write_tif(tmp_path / "msi.tif", msi, crs=crs, transform=transform, descriptions=bands)
    fuse_files(hsi_path, msi_path, tmp_path / "out.tif", FuseOptions(sensor="sentinel2a", steps=200, members=1),
               qa=tmp_path / "qa.tif")
    with rasterio.open(tmp_path / "qa.tif") as ds:
        col, row = (round(v) for v in ~transform * (ds.transform.c, ds.transform.f))  # output window in the MSI
        novelty, reason = ds.read(3), ds.read(4)
    planted = np.zeros(novelty.shape, bool)
    planted[20 - row:28 - row, 60 - col:68 - col] = True
    elsewhere = ~planted & np.isfinite(novelty)
    assert novelty[planted].min() > 5 * qa.NOVEL
    assert np.median(novelty[elsewhere]) < 1.0 and np.percentile(novelty[elsewhere], 90) < qa.NOVEL
    gap = (slice(40 - row, 44 - row), slice(10 - col, 14 - col))
    assert (reason[gap] == qa.NODATA_NO_MSI).all() and np.isnan(novelty[gap]).all()
    assert (reason[planted] == qa.NODATA_VALID).all()



def test_the_students_pixels_read_in_strips_are_the_arrays_grid():
    """``geolift fuse`` reads the student's HR pixels strip by strip from the file; they must be the pixels
    ``SpectraLift.predict`` takes from the same array (``distillation_pixels``), or the two would train different
    students. A 600 x 300 grid: stride 5, and strips of 256 rows that start off the grid (rows 256 and 512)."""
    from types import SimpleNamespace

    from geolift.fuse import distillation_sample
    from geolift.model import distillation_pixels, distillation_stride

    image = np.random.default_rng(3).random((4, 600, 300)).astype(np.float32)
    assert distillation_stride(600, 300) == 5
    reads = []

    def model_input(window):
        reads.append(window)
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        return image[:, rows, cols].copy()

    plan = SimpleNamespace(grid=SimpleNamespace(height=600, width=300), model_input=model_input)
    np.testing.assert_array_equal(distillation_sample(plan), distillation_pixels(image))
    assert len(reads) == 3 and sum(int(w.height) for w in reads) == 600  # every row read once
