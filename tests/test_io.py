"""geolift.io: reading real GeoTIFF / ENVI / JP2 files and writing the fused GeoTIFF atomically."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

import geolift.io.read
from geolift.errors import GeoliftWarning, InputError, MetadataError, OutputError
from geolift.grid import Grid
from geolift.io import (
    Encoding,
    HSIWriter,
    OutputBands,
    band_token,
    block_windows,
    check_output_path,
    gdal_path,
    is_remote,
    open_scene,
    write_hsi,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
ENMAP_TIF = SAMPLES / "enmap_sim_berlin_30m_177b.tif"
ENMAP_ENVI = SAMPLES / "EnMAP_BerlinUrbanGradient.bsq"
HYMAP_TIF = SAMPLES / "hymap_berlin_3p6m_4b.tif"
HYMAP_HDR = SAMPLES / "HighResolution_BerlinUrbanGradient.hdr"
POTSDAM = SAMPLES / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"

UTM33 = "EPSG:32633"


def make_tif(path, data, *, transform=None, crs=UTM33, nodata=None, descriptions=None, band_tags=None,
             imagery=None, scales=None, offsets=None, driver="GTiff", **options):
    """Write a small real raster with rasterio (the only way these tests create inputs)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, nodata=nodata, **options)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            for i in range(data.shape[0]):
                if descriptions:
                    ds.set_band_description(i + 1, descriptions[i])
                if band_tags:
                    ds.update_tags(i + 1, **band_tags[i])
                if imagery:
                    ds.update_tags(i + 1, ns="IMAGERY", **imagery[i])
            if scales is not None:
                ds.scales = scales
            if offsets is not None:
                ds.offsets = offsets
    return Path(path)


GRID = from_origin(383000.0, 5818000.0, 30.0, 30.0)


# --------------------------------------------------------------------------- reading real samples


def test_geotiff_and_gzip_envi_samples_agree():
    tif = open_scene(ENMAP_TIF, require_wavelengths=True)
    envi = open_scene(ENMAP_ENVI, require_wavelengths=True)
    assert (tif.count, tif.height, tif.width) == (envi.count, envi.height, envi.width) == (177, 80, 60)
    assert tif.crs == envi.crs and tif.crs.to_epsg() == 32633
    assert tif.transform.almost_equals(envi.transform)
    assert tif.transform.b == envi.transform.b == 0.0  # ENVI's -0.0 rotation dust is cleaned
    np.testing.assert_allclose(tif.wavelengths_nm, envi.wavelengths_nm, atol=1e-6)
    np.testing.assert_allclose(tif.fwhm_nm, envi.fwhm_nm, atol=1e-6)
    assert tif.wavelengths_nm[0] == pytest.approx(460.0) and tif.wavelengths_nm[-1] == pytest.approx(2409.0)
    assert tif.nodata[0] == envi.nodata[0] == -99
    a, b = tif.read(), envi.read()
    assert a.dtype == np.float32 and a.shape == (177, 80, 60)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and 0 < np.nanmean(a) < 10000


def test_envi_header_path_opens_the_data_file_with_micrometre_wavelengths_in_nm():
    scene = open_scene(HYMAP_HDR, require_wavelengths=True)
    assert Path(scene.path).name == "HighResolution_BerlinUrbanGradient.bsq"
    # the header gives 0.484300 ... Micrometers
    np.testing.assert_allclose(scene.wavelengths_nm, [484.3, 558.4, 646.5, 804.6], atol=1e-6)
    np.testing.assert_allclose(scene.fwhm_nm, [14.8, 15.2, 15.3, 16.2], atol=1e-6)
    assert scene.descriptions[0] == "band 3 (0.484300 Micrometers)"
    tif = open_scene(HYMAP_TIF)
    np.testing.assert_allclose(tif.wavelengths_nm, scene.wavelengths_nm, atol=1e-6)
    window = Window(100, 200, 64, 32)
    np.testing.assert_array_equal(scene.read(window=window), tif.read(window=window))


def test_potsdam_bad_bands_and_nodata():
    scene = open_scene(POTSDAM, require_wavelengths=True)
    assert scene.count == 224 and scene.nodata[0] == -32768
    bad = np.flatnonzero(~scene.good_bands)
    assert bad.size == 6
    assert np.all((scene.wavelengths_nm[bad] > 1320) & (scene.wavelengths_nm[bad] < 1400))
    np.testing.assert_array_equal(scene.good_band_indices(), np.flatnonzero(scene.good_bands))
    cube = scene.read()
    with rasterio.open(POTSDAM) as ds:
        raw = ds.read()
    np.testing.assert_array_equal(np.isnan(cube), raw == -32768)
    assert np.isnan(cube[bad]).all()  # the flagged bands hold only nodata
    good = cube[scene.good_bands]
    assert np.isfinite(good).mean() > 0.9
    np.testing.assert_array_equal(good[np.isfinite(good)], raw[scene.good_bands][np.isfinite(good)])


def test_windowed_and_band_subset_reads_equal_slices_of_the_full_read():
    scene = open_scene(POTSDAM)
    full = scene.read()
    window = Window(col_off=37, row_off=11, width=50, height=23)
    np.testing.assert_array_equal(scene.read(window=window), full[:, 11:34, 37:87])
    np.testing.assert_array_equal(scene.read(window=((11, 34), (37, 87)), bands=[5, 0, 200]),
                                  full[[5, 0, 200], 11:34, 37:87])
    np.testing.assert_array_equal(scene.read(bands=scene.good_bands), full[scene.good_bands])
    with pytest.raises(ValueError):
        scene.read(window=Window(120, 0, 20, 10))  # runs off the right edge


def test_out_shape_averages_and_ignores_nodata(tmp_path):
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    data[0, 0] = -1
    path = make_tif(tmp_path / "a.tif", data, transform=GRID, nodata=-1)
    small = open_scene(path).read(out_shape=(4, 4))
    assert small.shape == (1, 4, 4)
    assert small[0, 0, 0] == pytest.approx((1 + 8 + 9) / 3)  # the nodata pixel is left out of the mean
    assert small[0, 3, 3] == pytest.approx(data[6:8, 6:8].mean())


def test_scene_pickles_and_reads_after_unpickling():
    scene = open_scene(HYMAP_TIF)
    clone = pickle.loads(pickle.dumps(scene))
    assert clone.crs == scene.crs and clone.band_names == scene.band_names
    np.testing.assert_array_equal(clone.read(window=Window(0, 0, 16, 16)), scene.read(window=Window(0, 0, 16, 16)))
    assert clone.bounds.left == pytest.approx(383469.97) and clone.res == (3.6, 3.6)


# --------------------------------------------------------------------------- wavelengths from metadata


def test_description_only_wavelengths(tmp_path):
    path = make_tif(tmp_path / "desc.tif", np.ones((3, 4, 4), np.int16), transform=GRID,
                    descriptions=["Band 1 (450.5 Nanometers)", "band 8 (0.560000 Micrometers)", "NIR 842 nm"])
    scene = open_scene(path, require_wavelengths=True)
    np.testing.assert_allclose(scene.wavelengths_nm, [450.5, 560.0, 842.0])
    assert scene.fwhm_nm is None
    assert scene.wavelength_source == "band descriptions"
    assert scene.band_names == ("Band 1 (450.5 Nanometers)", "band 8 (0.560000 Micrometers)", "NIR 842 nm")


def test_micrometre_band_tags_are_converted_and_unitless_values_are_guessed_with_a_warning(tmp_path):
    data = np.ones((2, 4, 4), np.float32)
    um = make_tif(tmp_path / "um.tif", data, transform=GRID, band_tags=[
        {"wavelength": "0.45", "fwhm": "0.01", "wavelength_units": "Micrometers"},
        {"wavelength": "1.65", "fwhm": "0.02", "wavelength_units": "µm"}])
    scene = open_scene(um)
    np.testing.assert_allclose(scene.wavelengths_nm, [450.0, 1650.0])
    np.testing.assert_allclose(scene.fwhm_nm, [10.0, 20.0])

    bare = make_tif(tmp_path / "bare.tif", data, transform=GRID,
                    band_tags=[{"wavelength": "0.45", "fwhm": "0.01"}, {"wavelength": "1.65", "fwhm": "0.02"}])
    with pytest.warns(GeoliftWarning, match="micrometres"):
        scene = open_scene(bare)
    np.testing.assert_allclose(scene.wavelengths_nm, [450.0, 1650.0])
    np.testing.assert_allclose(scene.fwhm_nm, [10.0, 20.0])

    bare_nm = make_tif(tmp_path / "bare_nm.tif", data, transform=GRID,
                       band_tags=[{"wavelength": "450", "fwhm": "10"}, {"wavelength": "1650", "fwhm": "20"}])
    with pytest.warns(GeoliftWarning, match="nanometres"):
        scene = open_scene(bare_nm)
    np.testing.assert_allclose(scene.fwhm_nm, [10.0, 20.0])  # FWHM follows the wavelengths' unit, not its own size


def test_imagery_domain_wavelengths(tmp_path):
    path = make_tif(tmp_path / "imagery.tif", np.ones((2, 4, 4), np.uint16), transform=GRID,
                    imagery=[{"CENTRAL_WAVELENGTH_UM": "0.49", "FWHM_UM": "0.065"},
                             {"CENTRAL_WAVELENGTH_UM": "0.842", "FWHM_UM": "0.115"}])
    scene = open_scene(path, require_wavelengths=True)
    np.testing.assert_allclose(scene.wavelengths_nm, [490.0, 842.0])
    np.testing.assert_allclose(scene.fwhm_nm, [65.0, 115.0])
    assert scene.wavelength_source == "IMAGERY metadata"


def test_unsupported_wavelength_units_are_refused(tmp_path):
    path = make_tif(tmp_path / "ghz.tif", np.ones((1, 4, 4), np.float32), transform=GRID,
                    band_tags=[{"wavelength": "30", "wavelength_units": "GHz"}])
    with pytest.raises(MetadataError, match="ghz.tif.*GHz"):
        open_scene(path)


# --------------------------------------------------------------------------- nodata, scale, offset


def test_nodata_becomes_nan_and_can_be_overridden(tmp_path):
    data = np.array([[[0, 5], [7, 0]]], dtype=np.uint16)
    path = make_tif(tmp_path / "s2.tif", data, transform=GRID, nodata=None)
    plain = open_scene(path).read()
    assert np.isfinite(plain).all()
    overridden = open_scene(path, nodata=0)
    assert overridden.nodata == (0.0,)
    np.testing.assert_array_equal(np.isnan(overridden.read()), data == 0)


def test_float_file_nodata_and_nan(tmp_path):
    data = np.array([[[1.5, -9999.0], [np.nan, 2.5]]], dtype=np.float32)
    path = make_tif(tmp_path / "f.tif", data, transform=GRID, nodata=-9999)
    out = open_scene(path).read()
    np.testing.assert_array_equal(np.isnan(out), [[[False, True], [True, False]]])
    assert out[0, 0, 0] == 1.5 and out[0, 1, 1] == 2.5


def test_internal_mask_becomes_nan(tmp_path):
    path = tmp_path / "masked.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=2, dtype="uint16", crs=UTM33,
                       transform=GRID) as ds:
        ds.write(np.full((2, 4, 4), 9, np.uint16))
        mask = np.full((4, 4), 255, np.uint8)
        mask[0, :2] = 0
        ds.write_mask(mask)
    out = open_scene(path).read()
    np.testing.assert_array_equal(np.isnan(out), np.broadcast_to(mask == 0, (2, 4, 4)))


def test_scale_and_offset_are_applied(tmp_path):
    data = np.array([[[100, 200], [-1, 400]], [[1, 2], [3, 4]]], dtype=np.int16)
    path = make_tif(tmp_path / "scaled.tif", data, transform=GRID, nodata=-1,
                    scales=(0.5, 1.0), offsets=(10.0, 0.0))
    scene = open_scene(path)
    np.testing.assert_array_equal(scene.scales, [0.5, 1.0])
    out = scene.read()
    np.testing.assert_allclose(out[0], [[60.0, 110.0], [np.nan, 210.0]])  # raw * 0.5 + 10, nodata stays NaN
    np.testing.assert_array_equal(out[1], data[1])


def test_a_large_window_read_in_row_strips_equals_one_read(tmp_path, monkeypatch):
    """Large windows are read a strip of block rows at a time (bounded memory): same pixels, nodata, scales."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, size=(5, 70, 40)).astype(np.int16)
    data[2, 33, 7] = data[0, 64, 39] = -1
    path = make_tif(tmp_path / "tiled.tif", data, transform=GRID, nodata=-1, scales=(0.5,) * 5,
                    offsets=(1.0,) * 5, tiled=True, blockxsize=16, blockysize=16)
    scene = open_scene(path)
    window = Window(col_off=3, row_off=5, width=37, height=61)  # not on block rows
    whole = scene.read(window=window, bands=[4, 0, 2])
    row_bytes = 4 * 3 * 37
    monkeypatch.setattr(geolift.io.read, "READ_STRIP_BYTES", 20 * row_bytes)  # -> strips of 16 rows
    fb = scene.files[0]
    strips = scene._row_strips(fb, window, 3)
    assert strips == [(0, 11), (11, 27), (27, 43), (43, 59), (59, 61)]  # cut on file rows 16, 32, 48, 64
    np.testing.assert_array_equal(scene.read(window=window, bands=[4, 0, 2]), whole)
    expected = data[[4, 0, 2], 5:66, 3:40].astype(np.float32) * 0.5 + 1.0
    expected[data[[4, 0, 2], 5:66, 3:40] == -1] = np.nan
    np.testing.assert_array_equal(whole, expected)


# --------------------------------------------------------------------------- band lists


@pytest.mark.parametrize(
    "name, token",
    [
        ("T33UUU_20230724T102031_B02_10m.jp2", "B02"),
        ("T33UUU_20230724T102031_B8A.jp2", "B8A"),
        ("LC08_L2SP_193023_20230101_20230110_02_T1_SR_B4.TIF", "B4"),
        ("LC09_L1TP_193023_20230101_20230110_02_T1_B10.TIF", "B10"),
        ("S2B_MSIL2A_20230724_b11_20m.tif", "B11"),
        ("my_ortho_mosaic.tif", None),
        ("LC08_..._BQA.TIF", None),
    ],
)
def test_band_token_from_file_names(name, token):
    assert band_token(name) == token


def test_band_files_at_two_resolutions_stack_on_the_finest_grid(tmp_path):
    rng = np.random.default_rng(0)
    coarse = rng.integers(1, 10000, (10, 12)).astype(np.uint16)  # 20 m
    fine = rng.integers(1, 10000, (20, 24)).astype(np.uint16)  # 10 m, same extent
    b8a = make_tif(tmp_path / "T33UUU_20230724T102031_B8A_20m.jp2", coarse, driver="JP2OpenJPEG",
                   transform=from_origin(300000, 5800200, 20, 20), QUALITY=100, REVERSIBLE="YES")
    b02 = make_tif(tmp_path / "T33UUU_20230724T102031_B02_10m.tif", fine,
                   transform=from_origin(300000, 5800200, 10, 10))

    nearest = open_scene([b8a, b02], resampling="nearest")  # coarse first: the grid is still the finest
    assert nearest.band_names == ("B8A", "B02")
    assert (nearest.width, nearest.height, nearest.res) == (24, 20, (10.0, 10.0))
    assert nearest.paths == (str(b8a), str(b02))
    stack = nearest.read()
    assert stack.shape == (2, 20, 24)
    np.testing.assert_array_equal(stack[1], fine)
    np.testing.assert_array_equal(stack[0], np.kron(coarse, np.ones((2, 2))))
    np.testing.assert_array_equal(nearest.read(window=Window(3, 5, 7, 9)), stack[:, 5:14, 3:10])

    bilinear = open_scene([b8a, b02]).read()
    np.testing.assert_array_equal(bilinear[1], fine)
    inner = bilinear[0, 2:-2, 2:-2]
    assert np.isfinite(inner).all()
    assert inner.min() >= coarse.min() and inner.max() <= coarse.max()
    assert not np.array_equal(bilinear[0], stack[0])  # really interpolated, not replicated
    assert abs(float(np.nanmean(bilinear[0])) - float(coarse.mean())) < 0.05 * float(coarse.mean())


def test_nodata_override_applies_to_warped_band_files(tmp_path):
    coarse = np.array([[0, 400], [500, 600]], dtype=np.uint16)  # Sentinel-2 style: 0 is fill, undeclared
    b05 = make_tif(tmp_path / "T33UUU_B05_20m.tif", coarse, transform=from_origin(300000, 5800040, 20, 20))
    b03 = make_tif(tmp_path / "T33UUU_B03_10m.tif", np.full((4, 4), 7, np.uint16),
                   transform=from_origin(300000, 5800040, 10, 10))
    stack = open_scene([b05, b03], nodata=0, resampling="nearest").read()
    np.testing.assert_array_equal(np.isnan(stack[0]), np.kron(coarse == 0, np.ones((2, 2), bool)))
    assert np.isfinite(stack[1]).all()


def test_band_files_must_share_a_crs(tmp_path):
    a = make_tif(tmp_path / "x_B02.tif", np.ones((4, 4), np.uint16), transform=GRID)
    b = make_tif(tmp_path / "x_B03.tif", np.ones((4, 4), np.uint16), transform=GRID, crs="EPSG:32632")
    with pytest.raises(InputError, match="CRS") as err:
        open_scene([a, b])
    assert "x_B03.tif" in str(err.value)


# --------------------------------------------------------------------------- bad inputs


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="nothere.tif"):
        open_scene(tmp_path / "nothere.tif")


def test_text_file_is_not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    with pytest.raises(InputError, match="notes.tif") as err:
        open_scene(path)
    assert not isinstance(err.value, MetadataError)


def test_folder_and_orphan_envi_header_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="folder"):
        open_scene(tmp_path)
    header = tmp_path / "orphan.hdr"
    shutil.copy(HYMAP_HDR, header)
    with pytest.raises(InputError, match="orphan.hdr"):
        open_scene(header)


def test_missing_crs_raises_metadata_error(tmp_path):
    path = make_tif(tmp_path / "nocrs.tif", np.ones((4, 4), np.uint16), transform=GRID, crs=None)
    with pytest.raises(MetadataError, match="nocrs.tif.*CRS"):
        open_scene(path)


def test_missing_geotransform_raises_metadata_error(tmp_path):
    path = make_tif(tmp_path / "nogt.tif", np.ones((4, 4), np.uint16), transform=None, crs=UTM33)
    with pytest.raises(MetadataError, match="nogt.tif.*geotransform"):
        open_scene(path)


def test_gcp_only_raster_raises_metadata_error(tmp_path):
    path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(row=r, col=c, x=300000 + 10 * c, y=5800000 - 10 * r)
            for r, c in [(0, 0), (0, 4), (4, 0), (4, 4)]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16") as ds:
            ds.write(np.ones((1, 4, 4), np.uint16))
            ds.gcps = (gcps, rasterio.crs.CRS.from_string(UTM33))
    with pytest.raises(MetadataError, match="gcps.tif.*ground control points"):
        open_scene(path)


def test_missing_wavelengths_raise_only_when_required(tmp_path):
    path = make_tif(tmp_path / "rgb.tif", np.ones((3, 4, 4), np.uint8), transform=GRID,
                    descriptions=["Red", "Green", "Blue"])
    scene = open_scene(path)
    assert scene.wavelengths_nm is None and scene.band_names == ("Red", "Green", "Blue")
    with pytest.raises(MetadataError, match="rgb.tif.*wavelengths"):
        open_scene(path, require_wavelengths=True)
    counters = make_tif(tmp_path / "layers.tif", np.ones((2, 4, 4), np.uint8), transform=GRID,
                        descriptions=["Layer (1)", "Layer (2)"])
    assert open_scene(counters).wavelengths_nm is None  # a number without a unit is not a wavelength


def test_all_nodata_scene_raises_input_error(tmp_path):
    path = make_tif(tmp_path / "empty.tif", np.full((2, 40, 40), -9999, np.float32), transform=GRID, nodata=-9999)
    with pytest.raises(InputError, match="empty.tif.*no valid pixels"):
        open_scene(path)
    assert open_scene(path, check_data=False).count == 2  # the check can be skipped


def test_one_valid_pixel_missed_by_the_preview_still_counts(tmp_path):
    data = np.full((1, 600, 600), -9999, np.float32)
    data[0, 301, 599] = 0.25  # off the decimated preview's sampling grid
    path = make_tif(tmp_path / "speck.tif", data, transform=GRID, nodata=-9999, tiled=True)
    assert open_scene(path).has_valid_pixels()


# --------------------------------------------------------------------------- writing


def hsi_cube(bands=5, rows=70, cols=90, seed=1):
    rng = np.random.default_rng(seed)
    cube = rng.uniform(0.0, 0.6, (bands, rows, cols)).astype(np.float32)
    cube[:, 3, 4] = np.nan
    return cube


WAVES = [450.5, 512.3, 600.0, 880.25, 1650.0]
FWHM = [10.0, 11.5, 12.0, 15.0, 20.0]


GOOD = [True, True, True, False, True]
BANDS = OutputBands(WAVES, FWHM, good=GOOD)


def writer_kwargs(**over):
    """write_hsi's keywords for the test cube's georeferencing and bands."""
    kw = dict(crs=UTM33, transform=from_origin(383469.97, 5818303.55, 3.6, 3.6), wavelengths_nm=WAVES,
              fwhm_nm=FWHM, good_bands=GOOD)
    kw.update(over)
    return kw


def grid(width, height):
    """The test cube's grid, ``width`` x ``height`` pixels."""
    return Grid(UTM33, from_origin(383469.97, 5818303.55, 3.6, 3.6), width, height)


def test_writer_round_trip_float32(tmp_path):
    cube = hsi_cube()
    out = tmp_path / "fused.tif"
    write_hsi(out, cube, tile=256, tags={"lr_hsi": "enmap.tif", "ratio": 8},
              parameters={"steps": 2500, "hidden": 64}, **writer_kwargs())
    with rasterio.open(out) as ds:
        assert ds.count == 5 and (ds.height, ds.width) == (70, 90)
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.compression.name == "deflate"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        assert ds.crs.to_epsg() == 32633
        assert ds.transform.almost_equals(from_origin(383469.97, 5818303.55, 3.6, 3.6))
        assert ds.descriptions[:2] == ("band 1 (450.5 nm)", "band 2 (512.3 nm)")
        assert ds.tags(2) == {"wavelength": "512.3", "fwhm": "11.5", "wavelength_units": "Nanometers", "bbl": "1"}
        assert ds.tags(4)["bbl"] == "0"
        assert ds.tags(5, ns="IMAGERY") == {"CENTRAL_WAVELENGTH_UM": "1.65", "FWHM_UM": "0.02"}
        tags = ds.tags()
        assert tags["lr_hsi"] == "enmap.tif" and tags["ratio"] == "8"
        assert json.loads(tags["geolift_parameters"]) == {"hidden": 64, "steps": 2500}
        assert tags["geolift_version"]
        np.testing.assert_array_equal(ds.read(), cube)
    assert sorted(os.listdir(tmp_path)) == ["fused.tif"]  # no temp file, no .aux.xml

    scene = open_scene(out, require_wavelengths=True)
    np.testing.assert_allclose(scene.wavelengths_nm, WAVES)
    np.testing.assert_allclose(scene.fwhm_nm, FWHM)
    np.testing.assert_array_equal(scene.good_bands, [True, True, True, False, True])
    np.testing.assert_array_equal(scene.read(), cube)


def test_writer_band_names_replace_the_default_label(tmp_path):
    names = ["band 8 (0.460000 Micrometers)", "B2", "green", "red", "nir"]
    out = write_hsi(tmp_path / "named.tif", hsi_cube(), band_names=names, **writer_kwargs())
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("band 8 (450.5 nm)", "B2 (512.3 nm)", "green (600 nm)", "red (880.25 nm)",
                                   "nir (1650 nm)")


def test_writer_int16_scale_metadata_clipping_and_nodata(tmp_path):
    cube = hsi_cube()
    cube[0, 0, 0] = 5.0  # 50000 does not fit in int16: clipped
    cube[1, 0, 0] = -3.2768  # would round onto the nodata value -32768: nudged by one
    out = write_hsi(tmp_path / "fused_i16.tif", cube, dtype="int16", scale=1e-4, **writer_kwargs())
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "int16" and ds.nodata == -32768
        assert ds.scales == (1e-4,) * 5 and ds.offsets == (0.0,) * 5
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        raw = ds.read()
    assert raw[0, 0, 0] == 32767 and raw[1, 0, 0] == -32767
    assert (raw[:, 3, 4] == -32768).all()
    np.testing.assert_array_equal(raw[2, 10:20, 10:20], np.rint(cube[2, 10:20, 10:20].astype(np.float64) * 1e4))
    back = open_scene(out).read()  # the reader unscales with the GDAL scale
    assert np.isnan(back[:, 3, 4]).all()
    ok = np.isfinite(cube) & (np.abs(cube) < 3)
    np.testing.assert_allclose(back[ok], cube[ok], atol=0.6e-4)


def test_gdal_command_line_reads_the_metadata(tmp_path):
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("gdalinfo is not installed")
    out = write_hsi(tmp_path / "fused.tif", hsi_cube(), dtype="int16", scale=1e-4, **writer_kwargs())
    info = json.loads(subprocess.run([gdalinfo, "-json", str(out)], check=True, capture_output=True).stdout)
    band = info["bands"][1]
    assert band["description"] == "band 2 (512.3 nm)"
    assert band["metadata"][""]["wavelength"] == "512.3"
    assert band["metadata"][""]["wavelength_units"] == "Nanometers"
    assert band["scale"] == pytest.approx(1e-4) and band["noDataValue"] == -32768
    assert band["block"] == [512, 512]
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"


def test_streamed_blocks_equal_a_whole_array_write(tmp_path):
    cube = hsi_cube(rows=300, cols=280)
    whole = write_hsi(tmp_path / "whole.tif", cube, **writer_kwargs())
    with HSIWriter(tmp_path / "streamed.tif", grid(280, 300), BANDS, Encoding(tile=256)) as writer:
        windows = list(writer.block_windows())
        assert len(windows) == 4 and windows[0] == Window(0, 0, 256, 256)
        for window in reversed(windows):  # any order
            r, c = window.toslices()
            writer.write_block(cube[:, r, c], window)
    with HSIWriter(tmp_path / "odd.tif", grid(280, 300), BANDS) as writer:
        seconds = writer.write_blocks(  # an iterable of windows not aligned with tiles
            (window, cube[(slice(None), *window.toslices())]) for window in block_windows(280, 300, 97))
    assert seconds > 0
    with rasterio.open(whole) as a, rasterio.open(tmp_path / "streamed.tif") as b, \
            rasterio.open(tmp_path / "odd.tif") as c:
        reference = a.read()
        np.testing.assert_array_equal(b.read(), reference)
        np.testing.assert_array_equal(c.read(), reference)
    np.testing.assert_array_equal(reference, cube)


def test_block_windows_tile_the_grid_exactly():
    windows = list(block_windows(1000, 700, 512))
    covered = np.zeros((700, 1000), int)
    for w in windows:
        r, c = w.toslices()
        covered[r, c] += 1
    assert (covered == 1).all() and len(windows) == 4


def test_zstd_option_and_write_block_shape_check(tmp_path):
    cube = hsi_cube()
    out = write_hsi(tmp_path / "z.tif", cube, compress="zstd", num_threads="ALL_CPUS", **writer_kwargs())
    with rasterio.open(out) as ds:
        assert ds.compression.name == "zstd"
        np.testing.assert_array_equal(ds.read(), cube)
    with pytest.raises(ValueError, match="shape"):
        with HSIWriter(tmp_path / "bad.tif", grid(90, 70), BANDS) as writer:
            writer.write_block(cube[:3], Window(0, 0, 90, 70))
    assert not (tmp_path / "bad.tif").exists()


def test_bigtiff_option(tmp_path):
    assert Encoding().creation_options["BIGTIFF"] == "IF_SAFER"
    assert Encoding().creation_options["NUM_THREADS"] == "2"
    small = write_hsi(tmp_path / "small.tif", hsi_cube(), **writer_kwargs())
    big = write_hsi(tmp_path / "big.tif", hsi_cube(), bigtiff="YES", **writer_kwargs())
    assert small.read_bytes()[2] == 42  # classic TIFF while it is safe
    assert big.read_bytes()[2] == 43  # BigTIFF magic number


def test_bad_writer_options_raise_output_error(tmp_path):
    with pytest.raises(OutputError, match="int16"):
        Encoding(dtype="uint8")
    with pytest.raises(OutputError, match="multiple of 16"):
        Encoding(tile=500)
    with pytest.raises(OutputError, match="Compression"):
        Encoding(compress="jpeg")
    with pytest.raises(OutputError, match="float32"):
        Encoding(scale=1e-4)
    with pytest.raises(OutputError, match="int16 range"):
        Encoding(dtype="int16", nodata=40000)
    with pytest.raises(OutputError, match="num_threads"):
        Encoding(num_threads=0)
    with pytest.raises(OutputError, match="3 band names for 5 bands"):
        OutputBands(WAVES, names=["a", "b", "c"])
    with pytest.raises(OutputError, match="at least one band"):
        OutputBands([])
    with pytest.raises(OutputError, match="Tile size 500"):  # the same checks through write_hsi
        write_hsi(tmp_path / "a.tif", hsi_cube(), tile=500, **writer_kwargs())
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- atomicity and output checks


def test_exception_inside_writer_leaves_no_output_and_no_temp_file(tmp_path):
    cube = hsi_cube()
    with pytest.raises(RuntimeError, match="model crashed"):
        with HSIWriter(tmp_path / "fused.tif", grid(90, 70), BANDS) as writer:
            temp = writer.temp_path
            assert temp.parent == tmp_path and temp.name.startswith(".fused.tif.geolift-tmp-")
            writer.write_block(cube[:, :35], Window(0, 0, 90, 35))
            assert temp.exists() and not (tmp_path / "fused.tif").exists()
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []


def test_existing_output_is_untouched_unless_overwrite(tmp_path):
    out = tmp_path / "fused.tif"
    out.write_bytes(b"previous result")
    with pytest.raises(OutputError, match="fused.tif.*already exists"):
        write_hsi(out, hsi_cube(), **writer_kwargs())
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["fused.tif"]
    write_hsi(out, hsi_cube(), overwrite=True, **writer_kwargs())
    with rasterio.open(out) as ds:
        assert ds.count == 5


def test_an_input_is_never_overwritten(tmp_path):
    src = tmp_path / "hymap.tif"
    shutil.copy(HYMAP_TIF, src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="one of the inputs"):
        write_hsi(src, hsi_cube(), overwrite=True, inputs=[src], **writer_kwargs())
    with pytest.raises(OutputError, match="one of the inputs"):  # an ENVI header counts as its data file
        check_output_path(tmp_path / "x.bsq", overwrite=True, inputs=[tmp_path / "x.hdr"])
    assert src.read_bytes() == before


def test_check_output_path_missing_folder_and_folder_paths(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "fused.tif")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path)
    assert check_output_path(tmp_path / "fused.tif") == tmp_path / "fused.tif"
    assert os.listdir(tmp_path) == []  # the write probe cleans up after itself


def test_check_output_path_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").touch()  # root ignores permissions: fall back to a read-only system folder
            (locked / "probe").unlink()
            folder = Path("/sys")
            if not folder.is_dir() or os.access(folder, os.W_OK) and _can_create(folder):
                pytest.skip("no unwritable folder available to this user")
        except PermissionError:
            folder = locked
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(folder / "fused.tif")
        with pytest.raises(OutputError):
            HSIWriter(folder / "fused.tif", grid(4, 4), BANDS)
    finally:
        locked.chmod(0o700)


def _can_create(folder: Path) -> bool:
    try:
        (folder / ".geolift-test").touch()
    except OSError:
        return False
    (folder / ".geolift-test").unlink()
    return True


def test_gdal_virtual_paths_and_urls_go_to_gdal_untouched(tmp_path):
    """Archives ship zipped or remote: /vsi paths must reach GDAL as written, URLs mapped to /vsi."""
    import zipfile

    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(HYMAP_TIF, "hymap.tif")
    scene = open_scene(f"/vsizip/{archive}/hymap.tif")
    direct = open_scene(HYMAP_TIF)
    assert scene.paths == (f"/vsizip/{archive}/hymap.tif",)
    window = ((10, 20), (30, 45))
    np.testing.assert_array_equal(scene.read(window=window), direct.read(window=window))
    assert gdal_path("s3://bucket/key/x.tif") == "/vsis3/bucket/key/x.tif"
    assert gdal_path("https://host/a/b.tif") == "/vsicurl/https://host/a/b.tif"
    assert gdal_path(tmp_path / "local.tif") == str(tmp_path / "local.tif") and not is_remote(tmp_path / "local.tif")
    with pytest.raises(InputError, match="/vsizip/"):
        open_scene(f"/vsizip/{archive}/missing.tif")


def test_one_path_mapper_for_every_entry_point(tmp_path, monkeypatch):
    """fuse, manifests and pairing share gdal_path: every URL scheme maps the same way everywhere."""
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("gs://bucket/b.tif") == "/vsigs/bucket/b.tif"
    assert gdal_path("az://container/b.tif") == "/vsiaz/container/b.tif"
    assert gdal_path("https://host/x.tif") == "/vsicurl/https://host/x.tif"
    assert gdal_path("ftp://host/pub/x.tif") == "/vsicurl/ftp://host/pub/x.tif"
    assert gdal_path("/vsizip//data/a.zip/b.tif") == "/vsizip//data/a.zip/b.tif"
    assert gdal_path("rel/x.tif", tmp_path) == str(tmp_path / "rel" / "x.tif")
    monkeypatch.chdir(tmp_path)
    assert gdal_path("rel/x.tif") == str(tmp_path / "rel" / "x.tif")
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    with pytest.raises(InputError, match="Unsupported URL scheme 'sftp'"):
        gdal_path("sftp://host/x.tif")
    with pytest.raises(InputError, match="sftp"):  # open_scene goes through the same mapper
        open_scene("sftp://host/x.tif")
    # An ftp:// URL reaches GDAL (which, offline, cannot read it) instead of being taken for a local file.
    with pytest.raises(InputError) as excinfo:
        open_scene("ftp://127.0.0.1:9/x.tif")
    assert "not found" not in str(excinfo.value) and "/vsicurl/ftp://127.0.0.1:9/x.tif" in str(excinfo.value)

