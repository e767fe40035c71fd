"""A miniature PRISMA L2D product (the real file name, HDF-EOS5 group paths, global attributes, band-interleaved-by-line
cubes in decreasing wavelength with empty channels, error matrices), built from a Potsdam Wald case with h5py and read
straight into geolift through GDAL's HDF5 driver, as a file and inside its ZIP."""

from __future__ import annotations

import json
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

h5py = pytest.importorskip("h5py", reason="the PRISMA miniature product is written with h5py (test extra)")

NAME = "PRS_L2D_STD_20220724101543_20220724101547_0001"
START = "2022-07-24T10:15:43.123456"
BANDS = ["B2", "B3", "B4", "B8"]
LOW, HIGH = -0.01, 1.1  # L2Scale<Det>Min/Max: reflectance = LOW + DN * (HIGH - LOW) / 65535
FIELDS = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
OUTSIDE = (slice(0, 2), slice(0, 3))  # LR pixels outside the swath: DN 0 in every band
INVALID = (9, 20)  # an invalid L1 pixel (error code 1) in one VNIR band
NEGATIVE = (12, 5)  # a negative atmospheric correction (code 2) in one SWIR band: not masked
BAD_VNIR = 4  # a VNIR channel whose flag is 0 (counted in increasing wavelength)


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.rint((reflectance - LOW) / (HIGH - LOW) * 65535).clip(1, 65535).astype(np.uint16)


def _values(dn: np.ndarray) -> np.ndarray:
    """What geolift must read for ``dn``: the scaling done in float32 as io does, DN 0 as nodata."""
    values = dn.astype(np.float32) * np.float32((HIGH - LOW) / 65535) + np.float32(LOW)
    values[dn == 0] = np.nan
    return values


@pytest.fixture(scope="module")
def prisma_case(tmp_path_factory):
    """The product (file and ZIP), a Sentinel-2-like HR-MSI, the equivalent hand-made GeoTIFF and the band facts."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", BANDS, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=3)
    reflectance = case.lr_hsi.astype(np.float64)
    vnir, swir = np.flatnonzero(wavelengths < 1000), np.flatnonzero(wavelengths > 900)  # they overlap, as PRISMA's
    # The overlap's SWIR channels sit 1.5 nm off their VNIR twins, as two detectors' channels do (never equal).
    wavelengths = np.concatenate([wavelengths, wavelengths[swir] + np.where(wavelengths[swir] < 1000, 1.5, 0.0)])
    fwhm = np.concatenate([fwhm, fwhm[swir]])
    reflectance = np.concatenate([reflectance, reflectance[swir]])
    swir = np.arange(cube.shape[0], cube.shape[0] + swir.size)
    folder = tmp_path_factory.mktemp("prisma")
    path = folder / f"{NAME}.he5"
    # PRISMA's grid is 30 m: the case's LR grid is relabelled so (its HR-MSI at 7.5 m), which changes no pixel.
    prisma = Affine(30.0, 0.0, transform.c, 0.0, -30.0, transform.f)
    rows, cols = reflectance.shape[1:]
    with h5py.File(path, "w") as f:
        for det, idx, empty in (("Vnir", vnir, 3), ("Swir", swir, 2)):
            # stored in decreasing wavelength, with empty channels (centre 0) at the end, (rows, bands, cols)
            order = idx[::-1]
            dn = _dn(reflectance[order])
            dn[(slice(None), *OUTSIDE)] = 0
            dn = np.concatenate([dn, np.zeros((empty, rows, cols), np.uint16)])
            f.create_dataset(f"{FIELDS}/{det.upper()}_Cube", data=dn.transpose(1, 0, 2))
            f.attrs[f"List_Cw_{det}"] = np.concatenate([wavelengths[order], np.zeros(empty)]).astype(np.float32)
            f.attrs[f"List_Fwhm_{det}"] = np.concatenate([fwhm[order], np.zeros(empty)]).astype(np.float32)
            flags = np.concatenate([np.ones(order.size), np.zeros(empty)]).astype(np.int32)
            if det == "Vnir":
                flags[order.size - 1 - BAD_VNIR] = 0
            f.attrs[f"List_Cw_{det}_Flags"] = flags
            f.attrs[f"L2Scale{det}Min"], f.attrs[f"L2Scale{det}Max"] = np.float32(LOW), np.float32(HIGH)
            errors = np.zeros(dn.shape, np.uint8)
            if det == "Vnir":
                errors[(7, *INVALID)] = 1
            else:
                errors[(30, *NEGATIVE)] = 2
            f.create_dataset(f"{FIELDS}/{det.upper()}_PIXEL_L2_ERR_MATRIX", data=errors.transpose(1, 0, 2))
        f.attrs["Epsg_Code"] = np.int32(crs.to_epsg())
        west, north = prisma.c + 15.0, prisma.f - 15.0  # the corners are pixel centres
        f.attrs["Product_ULcorner_easting"], f.attrs["Product_ULcorner_northing"] = west, north
        f.attrs["Product_LRcorner_easting"] = west + 30.0 * (cols - 1)
        f.attrs["Product_LRcorner_northing"] = north - 30.0 * (rows - 1)
        f.attrs["Product_StartTime"] = np.bytes_(START)
    archive = folder / f"{NAME}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, f"{NAME}.he5")
    msi = write_tif(folder / "s2.tif", case.hr_msi.astype(np.float32), crs=crs,
                    transform=prisma @ Affine.scale(0.25), descriptions=BANDS)
    order = np.concatenate([vnir, swir])
    values = _values(np.concatenate([_with_outside(_dn(reflectance[vnir])), _with_outside(_dn(reflectance[swir]))]))
    values[(slice(None), *INVALID)] = np.nan
    # GDAL hands the float32 attributes over as text: the hand-made file carries the centres as the product gives them
    as_given = open_scene(path)
    handmade = write_tif(folder / "handmade.tif", values, crs=crs, transform=prisma,
                         wavelengths=as_given.wavelengths_nm, fwhm=as_given.fwhm_nm)
    with rasterio.open(handmade, "r+") as ds:
        for b in range(1, values.shape[0] + 1):
            ds.update_tags(b, bbl="0" if b == BAD_VNIR + 1 else "1")
    return dict(path=path, archive=archive, msi=msi, handmade=handmade, wavelengths=wavelengths[order],
                fwhm=fwhm[order], n_vnir=vnir.size, transform=prisma, crs=crs)


def _with_outside(dn: np.ndarray) -> np.ndarray:
    dn[(slice(None), *OUTSIDE)] = 0
    return dn


@pytest.mark.parametrize("form", ["he5", "zip"])
def test_a_prisma_product_opens_as_delivered(prisma_case, form):
    scene = open_scene(prisma_case["path"] if form == "he5" else prisma_case["archive"], require_wavelengths=True)
    np.testing.assert_allclose(scene.wavelengths_nm, prisma_case["wavelengths"], rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(scene.fwhm_nm, prisma_case["fwhm"], rtol=1e-6)
    assert scene.crs == prisma_case["crs"] and scene.transform.almost_equals(prisma_case["transform"])
    assert scene.tags["acquisition_time"] == START and scene.tags["product_name"] == NAME
    assert scene.tags["sensor"] == "PRISMA" and scene.tags["processing_level"] == "L2D"
    assert np.flatnonzero(~scene.good_bands).tolist() == [BAD_VNIR]  # the flagged channel; the empty ones are gone
    np.testing.assert_allclose(scene.offsets, LOW, rtol=1e-6)
    assert json.loads(scene.tags["masked_pixels"]) == {"invalid VNIR pixel": 1, "invalid SWIR pixel": 0}
    data = scene.read()
    assert np.isnan(data[(slice(None), *OUTSIDE)]).all() and np.isnan(data[(slice(None), *INVALID)]).all()
    assert np.isfinite(data[(slice(None), *NEGATIVE)]).all()  # a single-band atmospheric-correction code: kept
    np.testing.assert_array_equal(data[(slice(None), *np.nonzero(np.isfinite(data[0])))],
                                  _read(prisma_case["handmade"])[(slice(None), *np.nonzero(np.isfinite(data[0])))])
    window = scene.read(window=((5, 9), (10, 17)), bands=[0, 3, scene.count - 1])
    np.testing.assert_array_equal(window, data[[0, 3, scene.count - 1], 5:9, 10:17])
    if form == "zip":
        assert scene.path.startswith("HDF5:/vsizip/")  # read in place, never unpacked


def _read(path):
    with rasterio.open(path) as ds:
        values = ds.read().astype(np.float32)
    return values


@pytest.mark.parametrize("overlap", ["vnir", "swir"])
def test_the_detector_overlap_keeps_one_detector_when_asked(prisma_case, overlap):
    both = open_scene(prisma_case["path"])
    one = open_scene(prisma_case["path"], overlap=overlap)
    n_vnir = prisma_case["n_vnir"]
    vnir, swir = both.wavelengths_nm[:n_vnir], both.wavelengths_nm[n_vnir:]
    assert swir.min() < vnir.max()  # the fixture's detectors do overlap
    if overlap == "vnir":
        kept = np.concatenate([np.arange(n_vnir), n_vnir + np.flatnonzero(swir > vnir.max())])
    else:
        kept = np.concatenate([np.flatnonzero(vnir < swir.min()), n_vnir + np.arange(swir.size)])
    np.testing.assert_array_equal(one.wavelengths_nm, both.wavelengths_nm[kept])
    np.testing.assert_array_equal(one.read(), both.read(bands=kept))  # the same pixels, band for band
    assert one.count < both.count


def test_a_damaged_prisma_file_is_one_clear_error(prisma_case, tmp_path):
    truncated = tmp_path / f"{NAME}.he5"
    truncated.write_bytes(prisma_case["path"].read_bytes()[:4000])
    with pytest.raises(InputError, match="PRISMA file .* truncated"):
        open_scene(truncated)
    sensor_geometry = tmp_path / NAME.replace("L2D", "L2C")
    sensor_geometry = sensor_geometry.with_suffix(".he5")
    sensor_geometry.write_bytes(prisma_case["path"].read_bytes())
    with pytest.raises(InputError, match="L2C product, in sensor geometry"):
        open_scene(sensor_geometry)
    shifted = tmp_path / "other" / f"{NAME}.he5"
    shifted.parent.mkdir()
    shifted.write_bytes(prisma_case["path"].read_bytes())
    with h5py.File(shifted, "a") as f:
        f.attrs["Product_LRcorner_easting"] = f.attrs["Product_LRcorner_easting"] + 3000.0
    with pytest.raises(MetadataError, match="corners .* do not span"):
        open_scene(shifted)


def test_fusing_the_zipped_prisma_product_equals_fusing_the_handmade_geotiff(prisma_case, tmp_path):
    from geolift.cli import _register_commands, app

    _register_commands()
    outputs = {}
    for label, hsi in (("product", prisma_case["archive"]), ("handmade", prisma_case["handmade"])):
        out = tmp_path / f"{label}.tif"
        result = CliRunner().invoke(app, ["fuse", str(hsi), str(prisma_case["msi"]), "--sensor", "sentinel2",
                                          "--steps", "60", *ONE_NETWORK, "--dtype", "float32", "-o", str(out),
                                          "--progress", "none", "--report", str(tmp_path / f"{label}.json")])
        assert result.exit_code == 0, result.output
        outputs[label] = _read(out)
    np.testing.assert_array_equal(outputs["product"], outputs["handmade"])
    report = json.loads((tmp_path / "product.json").read_text())
    assert report["hsi_product"]["sensor"] == "PRISMA" and report["hsi_masked_pixels"]["invalid VNIR pixel"] == 1


def test_info_says_what_geolift_understood_of_a_prisma_product(prisma_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(prisma_case["archive"])])
    assert result.exit_code == 0, result.output
    assert f"product: PRISMA L2D {NAME}; acquired {START}" in result.output
    assert "quality masks: invalid VNIR pixel, invalid SWIR pixel" in result.output


def test_batch_pairs_a_prisma_product_by_the_date_in_its_time_stamp(prisma_case, tmp_path):
    """PRISMA names carry YYYYMMDDhhmmss stamps: the date in them pairs the product and gives the days between."""
    import shutil

    from geolift.batch import pair_folders
    from geolift.batch.report import job_result

    hsi_dir, msi_dir = tmp_path / "prisma", tmp_path / "s2"
    hsi_dir.mkdir()
    msi_dir.mkdir()
    shutil.copy(prisma_case["archive"], hsi_dir)
    shutil.copy(prisma_case["msi"], msi_dir / "S2B_MSIL2A_20220724T101559_stack.tif")
    shutil.copy(prisma_case["msi"], msi_dir / "S2A_MSIL2A_20220727T101031_stack.tif")
    jobs, unmatched = pair_folders(hsi_dir, msi_dir, tmp_path / "out")
    assert unmatched == [] and len(jobs) == 1
    assert jobs[0].msi[0].endswith("20220724T101559_stack.tif") and job_result(jobs[0], "done").days_apart == 0
