"""A miniature DESIS L2A product (real file names and metadata structure, a few real pixels from the Potsdam EnMAP cube
cut to DESIS's 400-1000 nm), as a folder, its METADATA.xml and a ZIP, read straight into geolift."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import ONE_NETWORK, read_potsdam_cube, write_tif
from typer.testing import CliRunner

from geolift import evaluate, srf
from geolift.errors import InputError, MetadataError
from geolift.io import open_scene
from geolift.io.products import desis

NAME = "DESIS-HSI-L2A-DT1203190212_025-20191203T021128-V0210"
START = "2019-12-03T02:11:28.612Z"
GAIN, FILL = 1e-4, -32768
BANDS = ["B2", "B3", "B4", "B8"]  # Sentinel-2 bands inside DESIS's 400-1000 nm
# LR pixels (row, col) that each QL_QUALITY-2 class flags.
CLOUD_LAND = (slice(2, 5), slice(10, 13))
CLOUD_WATER = (12, 3)
HAZE_LAND = (slice(8, 9), slice(20, 22))
SHADOW = (5, 12)  # next to the cloud
BACKGROUND = (slice(None), slice(0, 1))  # the first column lies outside the imaged area


def _quality_layer(shape: tuple[int, int]) -> np.ndarray:
    """QL_QUALITY-2: 0/1 class bands, then AOT x 100 and water vapour x 42 as values (non-zero everywhere)."""
    quality = np.zeros((10, *shape), np.uint8)
    quality[1] = 1  # clear land
    quality[1, :, -4:], quality[7, :, -4:] = 0, 1  # clear water along the right edge
    for band, index in ((5, CLOUD_LAND), (6, CLOUD_WATER), (3, HAZE_LAND), (0, SHADOW)):
        quality[(1, *index)] = quality[(7, *index)] = 0  # a flagged pixel is not clear
        quality[(band, *index)] = 1
    quality[8] = 15  # aerosol optical thickness 0.15
    quality[9] = 60  # water vapour about 1.4 cm
    return quality


def _metadata_xml(wavelengths: np.ndarray, fwhm: np.ndarray) -> str:
    """The METADATA.xml structure: hsi_doc/base/temporalCoverage, hsi_doc/specific/bandCharacterisation/band.

    The bands are written last to first (the reader orders them by bandNumber), and a geometric ``band`` under
    another parent must not count as a spectral band.
    """
    bands = "".join(
        f"<band><bandNumber>{k + 1}</bandNumber><wavelengthCenterOfBand>{float(w)!r}</wavelengthCenterOfBand>"
        f"<wavelengthWidthOfBand>{float(f)!r}</wavelengthWidthOfBand><gainOfBand>{GAIN}</gainOfBand>"
        f"<offsetOfBand>0</offsetOfBand><deadPixels>0</deadPixels><suspiciousPixel>0</suspiciousPixel></band>"
        for k, (w, f) in reversed(list(enumerate(zip(wavelengths, fwhm)))))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<hsi_doc><base><temporalCoverage>'
            f"<startTime>{START}</startTime><endTime>2019-12-03T02:11:32.702Z</endTime></temporalCoverage></base>"
            f"<specific><backgroundValue>{FILL}</backgroundValue>"
            "<interiorOrientation><band><bandNumber>1</bandNumber></band></interiorOrientation>"
            f"<bandCharacterisation>{bands}</bandCharacterisation></specific></hsi_doc>")


@pytest.fixture(scope="module")
def desis_case(tmp_path_factory):
    """A Wald case (ratio 4) whose LR-HSI is delivered as a DESIS L2A product, plus a Sentinel-2-like HR-MSI."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    vnir = wavelengths <= 1000
    cube, wavelengths, fwhm = cube[vnir], wavelengths[vnir], fwhm[vnir]
    R = srf.response_matrix("sentinel2a", BANDS, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=5)
    dn = np.rint(case.lr_hsi / GAIN).astype(np.int16)
    dn[-1] = FILL  # a band the product delivers empty
    dn[(slice(None), *BACKGROUND)] = FILL
    folder = tmp_path_factory.mktemp("desis") / NAME
    folder.mkdir()
    lr_transform = transform @ Affine.scale(4)
    profile = dict(driver="GTiff", crs=crs, transform=lr_transform, width=dn.shape[2], height=dn.shape[1])
    # No nodata tag: the reader takes backgroundValue from the metadata.
    with rasterio.open(folder / f"{NAME}-SPECTRAL_IMAGE.tif", "w", count=dn.shape[0], dtype="int16",
                       interleave="pixel", **profile) as ds:
        ds.write(dn)
    quality = _quality_layer(dn.shape[1:])
    with rasterio.open(folder / f"{NAME}-QL_QUALITY-2.tif", "w", count=10, dtype="uint8", **profile) as ds:
        ds.write(quality)
    (folder / f"{NAME}-METADATA.xml").write_text(_metadata_xml(wavelengths, fwhm))
    (folder / f"{NAME}-HISTORY.xml").write_text('<?xml version="1.0"?><history/>')
    nested, flat = folder.parent / f"{NAME}.zip", folder.parent / f"{NAME}-flat.zip"
    with zipfile.ZipFile(nested, "w") as zn, zipfile.ZipFile(flat, "w") as zf:
        for path in sorted(folder.iterdir()):
            zn.write(path, f"{NAME}/{path.name}")
            zf.write(path, path.name)
    msi = write_tif(folder.parent / "s2.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                    descriptions=BANDS)
    # The same LR-HSI as a hand-made GeoTIFF: DN x gain in float32, background and flagged pixels as nodata.
    values = dn.astype(np.float32) * np.float32(GAIN)
    values[dn == FILL] = np.nan
    flagged = quality[[0, 2, 3, 4, 5, 6]].any(axis=0)  # bands 1 and 3-7: shadow, snow, haze, cloud
    values[:, flagged] = np.nan
    handmade = folder.parent / "handmade.tif"
    write_tif(handmade, values, crs=crs, transform=lr_transform, wavelengths=wavelengths, fwhm=fwhm)
    with rasterio.open(handmade, "r+") as ds:  # the bad-band list (bbl) flags the empty last band
        for b in range(1, dn.shape[0] + 1):
            ds.update_tags(b, bbl="0" if b == dn.shape[0] else "1")
    return dict(folder=folder, zip=nested, flat_zip=flat, msi=msi, handmade=handmade, wavelengths=wavelengths,
                fwhm=fwhm, crs=crs, transform=lr_transform, shape=dn.shape)


@pytest.mark.parametrize("form", ["folder", "metadata", "zip", "flat_zip"])
def test_a_desis_product_opens_as_delivered(desis_case, form):
    folder = desis_case["folder"]
    source = {"folder": folder, "metadata": folder / f"{NAME}-METADATA.xml", "zip": desis_case["zip"],
              "flat_zip": desis_case["flat_zip"]}[form]
    scene = open_scene(source, require_wavelengths=True)
    bands, rows, cols = desis_case["shape"]
    np.testing.assert_array_equal(scene.wavelengths_nm, desis_case["wavelengths"])  # bandNumber order, 101 bands
    np.testing.assert_array_equal(scene.fwhm_nm, desis_case["fwhm"])
    assert np.all(scene.scales == GAIN) and np.all(scene.offsets == 0)
    assert scene.wavelength_source == "DESIS METADATA.xml" and scene.nodata == (FILL,) * bands
    assert scene.crs == desis_case["crs"] and scene.transform == desis_case["transform"]
    assert (scene.count, scene.height, scene.width) == (bands, rows, cols)
    assert scene.good_bands[:-1].all() and not scene.good_bands[-1]  # the empty band is bad
    assert scene.tags["sensor"] == "DESIS" and scene.tags["processing_level"] == "L2A"
    assert scene.tags["acquisition_time"] == START and scene.tags["product_name"] == NAME
    # cloud: 9 over land + 1 over water; AOT, water vapour and the clear classes mask nothing
    assert json.loads(scene.tags["masked_pixels"]) == {"cloud": 10, "shadow": 1, "haze": 2, "snow": 0}
    data = scene.read(bands=scene.good_bands)
    for index in (CLOUD_LAND, CLOUD_WATER, HAZE_LAND, SHADOW, BACKGROUND):
        assert np.isnan(data[(slice(None), *index)]).all()
    assert np.isfinite(data).sum(axis=(1, 2)).min() == rows * cols - 13 - rows  # 13 flagged, one background column
    assert np.nanmax(data) <= 1.0 and np.nanmin(data) >= 0.0  # DN x gain, background never read as -3.28
    if form.endswith("zip"):
        assert scene.path.startswith("/vsizip/") and all(m.path.startswith("/vsizip/") for m in scene.masks)


def test_a_truncated_or_hostile_metadata_file_is_one_clear_error(desis_case, tmp_path):
    broken = tmp_path / NAME
    shutil.copytree(desis_case["folder"], broken)
    metadata = broken / f"{NAME}-METADATA.xml"
    metadata.write_text(metadata.read_text()[:700])
    with pytest.raises(MetadataError, match="not valid XML.*truncated"):
        open_scene(broken)
    metadata.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><hsi_doc>&a;</hsi_doc>')
    with pytest.raises(MetadataError, match="entities"):
        open_scene(broken)


def test_a_product_that_does_not_match_its_metadata_is_one_clear_error(desis_case, tmp_path):
    broken = tmp_path / NAME
    shutil.copytree(desis_case["folder"], broken)
    metadata = broken / f"{NAME}-METADATA.xml"
    wavelengths, fwhm = desis_case["wavelengths"], desis_case["fwhm"]
    metadata.write_text(_metadata_xml(wavelengths[:-1], fwhm[:-1]))
    with pytest.raises(MetadataError, match=f"describes {wavelengths.size - 1} bands but .* has {wavelengths.size}"):
        open_scene(broken)
    metadata.write_text(_metadata_xml(wavelengths, fwhm))
    (broken / f"{NAME}-SPECTRAL_IMAGE.tif").unlink()
    with pytest.raises(InputError, match="has no SPECTRAL_IMAGE file"):
        open_scene(broken)


def test_a_folder_of_several_products_is_refused_but_each_metadata_file_opens(desis_case, tmp_path):
    other = NAME.replace("_025-", "_026-")
    for path in desis_case["folder"].iterdir():
        shutil.copy(path, tmp_path / path.name)
        shutil.copy(path, tmp_path / path.name.replace(NAME, other))
    with pytest.raises(InputError, match="holds 2 DESIS products"):
        open_scene(tmp_path)
    assert open_scene(tmp_path / f"{other}-METADATA.xml").tags["product_name"] == other


def test_fusing_the_zipped_product_equals_fusing_the_handmade_geotiff(desis_case, tmp_path):
    """No conversion step: the ZIP as downloaded gives the same output as the equivalent hand-made GeoTIFF."""
    from geolift.cli import _register_commands, app

    _register_commands()
    runner = CliRunner()
    outputs = {}
    for label, hsi in (("product", desis_case["zip"]), ("handmade", desis_case["handmade"])):
        out = tmp_path / f"{label}.tif"
        result = runner.invoke(app, ["fuse", str(hsi), str(desis_case["msi"]), "--sensor", "sentinel2",
                                     "--steps", "60", *ONE_NETWORK, "--dtype", "float32", "-o", str(out),
                                     "--report", str(tmp_path / f"{label}.json"), "--progress", "none"])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            outputs[label] = ds.read()
    np.testing.assert_array_equal(outputs["product"], outputs["handmade"])
    assert np.isfinite(outputs["product"]).any()
    report = json.loads((tmp_path / "product.json").read_text())
    assert report["hsi_product"] == {"product_name": NAME, "sensor": "DESIS", "processing_level": "L2A",
                                     "acquisition_time": START}
    assert report["hsi_masked_pixels"] == {"cloud": 10, "shadow": 1, "haze": 2, "snow": 0}


def test_info_says_what_geolift_understood_of_a_desis_product(desis_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(desis_case["zip"])])
    assert result.exit_code == 0, result.output
    bands = desis_case["shape"][0]
    assert f"product: DESIS L2A {NAME}; acquired {START}" in result.output
    assert f"bands: {bands}; wavelengths from DESIS METADATA.xml; bad bands: {bands}; " in result.output
    assert "quality masks: cloud, shadow, haze, snow" in result.output


def test_paths_that_are_no_desis_product_are_left_to_the_other_readers(desis_case, tmp_path):
    assert desis.find(desis_case["handmade"]) is None and desis.find(tmp_path) is None
    assert desis.find(f"/vsizip/{desis_case['zip']}/{NAME}/{NAME}-METADATA.xml") is None
    not_a_zip = tmp_path / "broken.zip"
    not_a_zip.write_bytes(b"PK no archive")
    assert desis.find(not_a_zip) is None
    assert Path(open_scene(desis_case["folder"]).path).name == f"{NAME}-SPECTRAL_IMAGE.tif"
