"""A miniature EMIT L2A granule (the real file names, netCDF groups, variables and attributes; the cube in swath
geometry with its geometry lookup table; a v001-layout mask file), written with h5netcdf from a Potsdam Wald case
and read straight into geolift, orthorectified through the GLT, as files, a folder and a ZIP."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import ONE_NETWORK, read_potsdam_cube, write_tif
from typer.testing import CliRunner

from geolift import evaluate, srf
from geolift.errors import InputError, MetadataError
from geolift.io import open_scene

h5netcdf = pytest.importorskip("h5netcdf", reason="the EMIT miniature granule is written with h5netcdf (test extra)")
h5py = pytest.importorskip("h5py")

GRANULE = "20230801T101502_2321307_004"
RFL, MASK = f"EMIT_L2A_RFL_001_{GRANULE}", f"EMIT_L2A_MASK_001_{GRANULE}"
START = "2023-08-01T10:15:02+0000"
BANDS = ["B2", "B3", "B4", "B8"]
MASK_BANDS = ["Cloud flag", "Cirrus flag", "Water flag", "Spacecraft Flag", "Dilated Cloud Flag", "AOD550",
              "H2O (g cm-2)", "Aggregate Flag"]
OUTSIDE = [(0, 0), (0, 1), (1, 0)]  # map pixels the swath does not reach (GLT 0)
TWIN = ((5, 7), (5, 8))  # the first map pixel takes the second's swath pixel (nearest neighbour repeats one)
CLOUD = [(3, 12), (3, 13), (4, 12)]  # map pixels whose swath pixels are cloud
WATER = (10, 20)  # water flag only: not masked
BAD = (14, 30)  # the swath pixel is -9999 in every band
BAD_BANDS = (100, 150)  # good_wavelengths = 0


def _swath_index(r, c, height):
    """Swath (downtrack, crosstrack) of map pixel (r, c): the swath runs along the map's columns, rotated."""
    return c, height - 1 - r


@pytest.fixture(scope="module")
def emit_case(tmp_path_factory):
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", BANDS, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=3)
    truth = case.lr_hsi.astype(np.float32)  # reflectance on the map grid
    n, height, width = truth.shape
    swath = np.zeros((width, height, n), np.float32)  # (downtrack, crosstrack, bands)
    glt_x, glt_y = np.zeros((height, width), np.int32), np.zeros((height, width), np.int32)
    for r in range(height):
        for c in range(width):
            d, x = _swath_index(r, c, height)
            swath[d, x] = truth[:, r, c]
            glt_y[r, c], glt_x[r, c] = d + 1, x + 1
    for r, c in OUTSIDE:
        glt_x[r, c] = glt_y[r, c] = 0
    (r, c), (r2, c2) = TWIN
    glt_x[r, c], glt_y[r, c] = glt_x[r2, c2], glt_y[r2, c2]
    swath[_swath_index(*BAD, height)] = -9999.0
    mask = np.zeros((width, height, len(MASK_BANDS)), np.float32)
    mask[..., 5] = 0.08  # AOD550 everywhere
    mask[..., 6] = 1.7  # H2O everywhere
    for r, c in CLOUD:
        mask[(*_swath_index(r, c, height), 0)] = 1
        mask[(*_swath_index(r, c, height), 7)] = 1
    mask[(*_swath_index(*WATER, height), 2)] = 1
    mask[(*_swath_index(*WATER, height), 7)] = 1
    good = np.ones(n, np.uint8)
    good[list(BAD_BANDS)] = 0
    lr_transform = transform @ Affine.scale(4)
    folder = tmp_path_factory.mktemp("emit") / "granule"
    folder.mkdir()
    for name, variable, data, per_band in ((RFL, "reflectance", swath, "bands"), (MASK, "mask", mask, "bands")):
        with h5netcdf.File(folder / f"{name}.nc", "w") as f:
            f.dimensions = {"downtrack": width, "crosstrack": height, "bands": data.shape[2]}
            f.create_variable(variable, ("downtrack", "crosstrack", per_band), np.float32, data=data,
                              fillvalue=np.float32(-9999.0))
            params = f.create_group("sensor_band_parameters")
            if variable == "reflectance":
                params.create_variable("wavelengths", ("bands",), np.float32, data=wavelengths.astype(np.float32))
                params.create_variable("fwhm", ("bands",), np.float32, data=fwhm.astype(np.float32))
                params.create_variable("good_wavelengths", ("bands",), np.uint8, data=good)
            else:
                params.create_variable("mask_bands", ("bands",), h5py.string_dtype(),
                                       data=np.array(MASK_BANDS, dtype=object))
            location = f.create_group("location")
            location.dimensions = {"ortho_y": height, "ortho_x": width}
            location.create_variable("glt_x", ("ortho_y", "ortho_x"), np.int32, data=glt_x)
            location.create_variable("glt_y", ("ortho_y", "ortho_x"), np.int32, data=glt_y)
            location.create_variable("lat", ("downtrack", "crosstrack"), np.float64,
                                     data=np.full((width, height), 52.4))
            f.attrs["geotransform"] = np.array(lr_transform.to_gdal(), dtype=np.float64)
            f.attrs["spatial_ref"] = crs.to_wkt()
            f.attrs["time_coverage_start"] = START
    archive = folder.parent / f"{RFL}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, path.name)
    expected = truth.copy()
    for r, c in OUTSIDE + CLOUD + [BAD]:
        expected[:, r, c] = np.nan
    expected[:, TWIN[0][0], TWIN[0][1]] = truth[:, TWIN[1][0], TWIN[1][1]]
    msi = write_tif(folder.parent / "s2.tif", case.hr_msi.astype(np.float32), crs=crs,
                    transform=transform, descriptions=BANDS)
    handmade = write_tif(folder.parent / "handmade.tif", expected, crs=crs, transform=lr_transform,
                         wavelengths=wavelengths.astype(np.float32).astype(np.float64),
                         fwhm=fwhm.astype(np.float32).astype(np.float64))
    with rasterio.open(handmade, "r+") as ds:
        for b in range(1, n + 1):
            ds.update_tags(b, bbl="0" if b - 1 in BAD_BANDS else "1")
    return dict(folder=folder, archive=archive, msi=msi, handmade=handmade, expected=expected, crs=crs,
                transform=lr_transform, wavelengths=wavelengths, fwhm=fwhm)


@pytest.mark.parametrize("form", ["nc", "folder", "zip"])
def test_an_emit_granule_opens_orthorectified_through_its_lookup_table(emit_case, form):
    source = {"nc": emit_case["folder"] / f"{RFL}.nc", "folder": emit_case["folder"], "zip": emit_case["archive"]}
    scene = open_scene(source[form], require_wavelengths=True)
    assert scene.crs == emit_case["crs"] and scene.transform.almost_equals(emit_case["transform"])
    assert (scene.height, scene.width) == emit_case["expected"].shape[1:]
    np.testing.assert_allclose(scene.wavelengths_nm, emit_case["wavelengths"], rtol=1e-6)
    np.testing.assert_allclose(scene.fwhm_nm, emit_case["fwhm"], rtol=1e-6)
    assert np.flatnonzero(~scene.good_bands).tolist() == list(BAD_BANDS)
    assert scene.tags["acquisition_time"] == START and scene.tags["product_name"] == RFL
    assert json.loads(scene.tags["masked_pixels"]) == {"cloud": 3, "cirrus": 0, "spacecraft": 0, "dilated cloud": 0}
    np.testing.assert_array_equal(scene.read(), emit_case["expected"])
    window = scene.read(window=((2, 7), (6, 15)), bands=[0, 50, 217])
    np.testing.assert_array_equal(window, emit_case["expected"][[0, 50, 217], 2:7, 6:15])
    if form == "zip":
        assert "/vsizip/" in scene.path  # read in place, never unpacked


def test_without_its_mask_file_the_granule_opens_and_says_clouds_are_not_masked(emit_case, tmp_path):
    shutil.copy(emit_case["folder"] / f"{RFL}.nc", tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("geolift")
    level = logger.level
    logger.addHandler(handler)  # a CLI test before may have quieted the logger and stopped it propagating
    logger.setLevel(logging.INFO)
    try:
        scene = open_scene(tmp_path / f"{RFL}.nc")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert scene.masks == () and any("clouds are not masked" in r.getMessage() for r in records)
    expected = emit_case["expected"].copy()
    data = scene.read()
    cloud = tuple(np.array(CLOUD).T)
    assert np.isfinite(data[(slice(None), *cloud)]).all()  # the cloud is data now
    expected[(slice(None), *cloud)] = data[(slice(None), *cloud)]
    np.testing.assert_array_equal(data, expected)


def test_a_damaged_emit_granule_is_one_clear_error(emit_case, tmp_path):
    truncated = tmp_path / f"{RFL}.nc"
    truncated.write_bytes((emit_case["folder"] / f"{RFL}.nc").read_bytes()[:3000])
    with pytest.raises(InputError, match="EMIT file .* truncated"):
        open_scene(truncated)
    other = tmp_path / "other"
    shutil.copytree(emit_case["folder"], other)
    with h5py.File(other / f"{MASK}.nc", "a") as f:
        del f["sensor_band_parameters/mask_bands"]
        f["sensor_band_parameters"].create_dataset("mask_bands", data=np.array([b"AOD550"] * len(MASK_BANDS)))
    with pytest.raises(MetadataError, match="none of the mask bands"):
        open_scene(other)
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(emit_case["folder"] / f"{RFL}.nc", twice)
    shutil.copy(emit_case["folder"] / f"{RFL}.nc", twice / f"{RFL.replace('2321307', '2321308')}.nc")
    with pytest.raises(InputError, match="holds 2 EMIT reflectance granules"):
        open_scene(twice)


def test_fusing_the_zipped_emit_granule_equals_fusing_the_handmade_geotiff(emit_case, tmp_path):
    from geolift.cli import _register_commands, app

    _register_commands()
    outputs = {}
    for label, hsi in (("product", emit_case["archive"]), ("handmade", emit_case["handmade"])):
        out = tmp_path / f"{label}.tif"
        result = CliRunner().invoke(app, ["fuse", str(hsi), str(emit_case["msi"]), "--sensor", "sentinel2",
                                          "--steps", "60", *ONE_NETWORK, "--dtype", "float32", "-o", str(out),
                                          "--progress", "none", "--report", str(tmp_path / f"{label}.json")])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            outputs[label] = ds.read()
    np.testing.assert_array_equal(outputs["product"], outputs["handmade"])
    report = json.loads((tmp_path / "product.json").read_text())
    assert report["hsi_product"]["sensor"] == "EMIT" and report["hsi_masked_pixels"]["cloud"] == 3


def test_info_says_what_geolift_understood_of_an_emit_granule(emit_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(emit_case["archive"])])
    assert result.exit_code == 0, result.output
    assert f"product: EMIT L2A {RFL}; acquired {START}" in result.output
    assert "quality masks: cloud, cirrus, spacecraft, dilated cloud" in result.output
