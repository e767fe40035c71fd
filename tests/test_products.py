"""Satellite products as delivered: a miniature EnMAP L2A product (real file names and metadata structure, a few real
pixels from the Potsdam EnMAP cube), as a folder, its METADATA.XML and a ZIP, read straight into geolift."""

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
from geolift.errors import GeoliftError, MetadataError
from geolift.io import open_scene

NAME = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z"
START = "2022-07-24T10:45:26.868Z"
GAIN, NODATA = 1e-4, -32768
BANDS = ["B2", "B3", "B4", "B8"]
CLOUD = (slice(2, 5), slice(10, 13))  # LR pixels a cloud covers
DEFECT = (7, 20)  # one LR pixel the detector lost


@pytest.fixture(scope="module")
def enmap_case(tmp_path_factory):
    """A Wald case (ratio 4) whose LR-HSI is delivered as an EnMAP L2A product, plus a Sentinel-2-like HR-MSI."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", BANDS, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=3)
    # Two water-vapour bands that EnMAP fills with nodata, between the others.
    wl = np.concatenate([wavelengths, [1400.0, 1900.0]])
    fw = np.concatenate([fwhm, [10.0, 10.0]])
    # Each band's detector: VNIR below 900 nm, SWIR above 1000 nm, alternating in between (the two overlap there).
    between = np.flatnonzero((wl >= 900) & (wl < 1000))
    detectors = np.where(wl < 900, "VNIR", "SWIR")
    detectors[between[::2]] = "VNIR"
    dn = np.rint(case.lr_hsi / GAIN).astype(np.int16)
    dn = np.concatenate([dn, np.full((2, *dn.shape[1:]), NODATA, np.int16)])
    folder = tmp_path_factory.mktemp("enmap") / NAME
    folder.mkdir()
    lr_transform = transform @ Affine.scale(4)
    profile = dict(driver="GTiff", crs=crs, transform=lr_transform, width=dn.shape[2], height=dn.shape[1])
    with rasterio.open(folder / f"{NAME}-SPECTRAL_IMAGE.TIF", "w", count=dn.shape[0], dtype="int16",
                       nodata=NODATA, **profile) as ds:
        ds.write(dn)
    cloud = np.zeros((1, *dn.shape[1:]), np.uint8)
    cloud[(0, *CLOUD)] = 1
    pixelmask = np.zeros((2, *dn.shape[1:]), np.uint8)  # per detector (VNIR, SWIR)
    pixelmask[(1, *DEFECT)] = 1
    for suffix, data in (("QL_QUALITY_CLOUD", cloud), ("QL_QUALITY_SNOW", np.zeros_like(cloud)),
                         ("QL_PIXELMASK", pixelmask)):
        with rasterio.open(folder / f"{NAME}-{suffix}.TIF", "w", count=data.shape[0], dtype="uint8",
                           **profile) as ds:
            ds.write(data)
    bands = "".join(
        f'<bandID number="{k + 1}"><wavelengthCenterOfBand>{float(w)!r}</wavelengthCenterOfBand>'
        f"<FWHMOfBand>{float(f)!r}</FWHMOfBand><GainOfBand>{GAIN}</GainOfBand><OffsetOfBand>0</OffsetOfBand></bandID>"
        for k, (w, f) in enumerate(zip(wl, fw)))
    channels = {det: ",".join(str(k + 1) for k in np.flatnonzero(detectors == det)) for det in ("VNIR", "SWIR")}
    (folder / f"{NAME}-METADATA.XML").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><level_X><base><temporalCoverage>'
        f"<startTime>{START}</startTime></temporalCoverage></base><specific><bandCharacterisation>{bands}"
        "</bandCharacterisation>"
        f"<vnirProductQuality><expectedChannelsList>{channels['VNIR']}</expectedChannelsList></vnirProductQuality>"
        f"<swirProductQuality><expectedChannelsList>{channels['SWIR']}</expectedChannelsList></swirProductQuality>"
        "</specific></level_X>")
    archive = folder.parent / f"{NAME}.ZIP"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"{NAME}/{path.name}")
    msi = write_tif(folder.parent / "s2.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                    descriptions=BANDS)
    # The same LR-HSI as a hand-made GeoTIFF: DN x gain in float32, masked pixels and the filled bands as nodata.
    values = dn.astype(np.float32) * np.float32(GAIN)
    values[dn == NODATA] = np.nan
    values[(slice(None), *CLOUD)] = np.nan
    values[(slice(None), *DEFECT)] = np.nan
    handmade = folder.parent / "handmade.tif"
    write_tif(handmade, values, crs=crs, transform=lr_transform, wavelengths=wl, fwhm=fw)
    with rasterio.open(handmade, "r+") as ds:  # the bad-band list (bbl) flags the two filled bands
        for b in range(1, dn.shape[0] + 1):
            ds.update_tags(b, bbl="0" if b > dn.shape[0] - 2 else "1")
    return folder, archive, msi, handmade, wl, fw


@pytest.mark.parametrize("form", ["folder", "metadata", "zip"])
def test_an_enmap_product_opens_as_delivered(enmap_case, form):
    folder, archive, _, _, wl, fw = enmap_case
    source = {"folder": folder, "metadata": folder / f"{NAME}-METADATA.XML", "zip": archive}[form]
    scene = open_scene(source, require_wavelengths=True)
    np.testing.assert_array_equal(scene.wavelengths_nm, wl)
    np.testing.assert_array_equal(scene.fwhm_nm, fw)
    assert np.all(scene.scales == GAIN) and scene.wavelength_source == "EnMAP METADATA.XML"
    assert scene.good_bands[:-2].all() and not scene.good_bands[-2:].any()  # the nodata-filled bands are bad
    assert scene.tags["acquisition_time"] == START and scene.tags["product_name"] == NAME
    assert json.loads(scene.tags["masked_pixels"]) == {"cloud": 9, "snow": 0, "detector no-data": 1}
    data = scene.read(bands=scene.good_bands)
    assert np.isnan(data[(slice(None), *CLOUD)]).all() and np.isnan(data[(slice(None), *DEFECT)]).all()
    assert np.isfinite(data).sum(axis=(1, 2)).min() == data.shape[1] * data.shape[2] - 10
    if form == "zip":
        assert scene.path.startswith("/vsizip/")  # read in place, never unpacked


def test_a_truncated_or_hostile_metadata_file_is_one_clear_error(enmap_case, tmp_path):
    folder = enmap_case[0]
    broken = tmp_path / NAME
    shutil.copytree(folder, broken)
    metadata = broken / f"{NAME}-METADATA.XML"
    metadata.write_text(metadata.read_text()[:500])
    with pytest.raises(MetadataError, match="not valid XML.*truncated"):
        open_scene(broken)
    metadata.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><level_X>&a;</level_X>')
    with pytest.raises(MetadataError, match="entities"):
        open_scene(broken)


def test_fusing_the_zipped_product_equals_fusing_the_handmade_geotiff(enmap_case, tmp_path):
    """No conversion step: the ZIP as downloaded gives the same output as the equivalent hand-made GeoTIFF."""
    from geolift.cli import _register_commands, app

    _, archive, msi, handmade, _, _ = enmap_case
    _register_commands()
    runner = CliRunner()
    outputs = {}
    for label, hsi in (("product", archive), ("handmade", handmade)):
        out = tmp_path / f"{label}.tif"
        result = runner.invoke(app, ["fuse", str(hsi), str(msi), "--sensor", "sentinel2", "--steps", "60", *ONE_NETWORK,
                                     "--dtype", "float32", "-o", str(out), "--report", str(tmp_path / f"{label}.json"),
                                     "--progress", "none"])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            outputs[label] = ds.read()
    np.testing.assert_array_equal(outputs["product"], outputs["handmade"])
    report = json.loads((tmp_path / "product.json").read_text())
    assert report["hsi_product"]["acquisition_time"] == START
    assert report["hsi_masked_pixels"]["cloud"] == 9


@pytest.mark.slow
def test_the_xarray_api_reads_and_fuses_the_zipped_product(enmap_case, tmp_path):
    """``geolift.xarray.open_hsi`` on the ZIP: geolift's product reader (gain applied, masks as NaN, bad bands, the
    acquisition time), and ``fuse`` on it gives what ``fuse_files`` writes for the product."""
    import geolift.xarray as gx
    from geolift.fuse import FuseOptions, fuse_files

    _, archive, msi, _, wl, _ = enmap_case
    hsi = gx.open_hsi(archive)
    scene = open_scene(archive, require_wavelengths=True)
    np.testing.assert_array_equal(hsi["wavelength"].values, wl)
    assert not hsi["good_band"].values[-2:].any() and hsi["good_band"].values[:-2].all()
    np.testing.assert_array_equal(hsi.values, scene.read())  # DN x gain, cloud and defect pixels NaN
    assert np.isnan(hsi.values[(slice(None), *CLOUD)]).all() and hsi.attrs["acquisition_time"] == START
    assert hsi.rio.encoded_nodata == NODATA and np.isnan(hsi.rio.nodata)  # NaN in the array, the file's value
    fused = gx.fuse(hsi, gx.open_msi(msi), sensor="sentinel2", steps=60, seed=0, chunks=32, members=1)
    fuse_files(archive, msi, tmp_path / "cli.tif", FuseOptions(sensor="sentinel2", steps=60, seed=0, members=1,
                                                               dtype="float32"))
    with rasterio.open(tmp_path / "cli.tif") as ds:
        np.testing.assert_array_equal(fused.values, ds.read())
    assert fused.geolift.report["hsi_product"]["acquisition_time"] == START


def test_a_folder_that_is_not_a_product_is_still_refused_as_a_folder(tmp_path):
    with pytest.raises(GeoliftError, match="is a folder"):
        open_scene(tmp_path)


def test_product_paths_keep_their_names(enmap_case):
    assert Path(open_scene(enmap_case[0]).path).name == f"{NAME}-SPECTRAL_IMAGE.TIF"


def test_info_says_what_geolift_understood_of_a_product(enmap_case):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["info", str(enmap_case[1])])
    assert result.exit_code == 0, result.output
    assert f"product: EnMAP L2A {NAME}; acquired {START}" in result.output
    assert "quality masks: cloud, snow, detector no-data" in result.output
    assert "bad bands: 219, 220" in result.output and "wavelengths from EnMAP METADATA.XML" in result.output
    facts = json.loads(CliRunner().invoke(app, ["info", str(enmap_case[1]), "--json"]).output)
    assert facts["band_table"][0]["scale"] == GAIN and len(facts["band_table"]) == 220


def test_batch_pairs_a_zipped_product_by_date_and_reports_the_days_between(enmap_case, tmp_path):
    from geolift.batch import pair_folders
    from geolift.batch.report import job_result

    _, archive, msi, _, _, _ = enmap_case
    hsi_dir, msi_dir = tmp_path / "enmap", tmp_path / "s2"
    hsi_dir.mkdir()
    msi_dir.mkdir()
    shutil.copy(archive, hsi_dir)
    shutil.copy(msi, msi_dir / "S2A_MSIL2A_20220727T101031_stack.tif")
    shutil.copy(msi, msi_dir / "S2A_MSIL2A_20220801T101031_stack.tif")
    jobs, unmatched = pair_folders(hsi_dir, msi_dir, tmp_path / "out")
    assert unmatched == [] and len(jobs) == 1
    job = jobs[0]
    assert job.hsi.endswith(".ZIP")  # the ZIP as downloaded is the job's HSI
    # no MSI has the product's date, so the footprint decides; both overlap it equally: the first in name order
    assert job.msi[0].endswith("20220727T101031_stack.tif") and job_result(job, "done").days_apart == 3



@pytest.mark.parametrize("overlap", ["vnir", "swir"])
def test_the_enmap_detector_overlap_keeps_one_detector_when_asked(enmap_case, overlap):
    """expectedChannelsList says which bands are whose; in the overlap only the chosen detector's stay."""
    folder, wl = enmap_case[0], enmap_case[4]
    both, one = open_scene(folder), open_scene(folder, overlap=overlap)
    between = np.flatnonzero((wl >= 900) & (wl < 1000))
    vnir = np.zeros(wl.size, bool)
    vnir[wl < 900] = True
    vnir[between[::2]] = True
    low, high = wl[~vnir].min(), wl[vnir].max()
    dropped = (wl >= low) & (wl <= high) & (~vnir if overlap == "vnir" else vnir)
    assert 0 < dropped.sum() < between.size
    np.testing.assert_array_equal(one.wavelengths_nm, wl[~dropped])
    np.testing.assert_array_equal(one.read(window=((0, 4), (0, 4))),
                                  both.read(window=((0, 4), (0, 4)), bands=np.flatnonzero(~dropped)))


def test_fuse_takes_the_overlap_choice_and_writes_only_the_kept_bands(enmap_case, tmp_path):
    from geolift.cli import _register_commands, app

    folder, _, msi, _, wl, _ = enmap_case
    _register_commands()
    out = tmp_path / "vnir.tif"
    result = CliRunner().invoke(app, ["fuse", str(folder), str(msi), "--sensor", "sentinel2", "--steps", "20",
                                      *ONE_NETWORK, "--overlap", "vnir", "-o", str(out), "--progress", "none",
                                      "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "kept the VNIR bands (--overlap vnir)" in result.output
    with rasterio.open(out) as ds:
        assert ds.count == open_scene(folder, overlap="vnir").count < wl.size
    assert json.loads((tmp_path / "r.json").read_text())["options"]["overlap"] == "vnir"
    refused = CliRunner().invoke(app, ["fuse", str(folder), str(msi), "--sensor", "sentinel2", "--overlap", "both",
                                       "-o", str(tmp_path / "x.tif")])
    assert refused.exit_code == 2 and "--overlap" in refused.output


def test_batch_refuses_a_product_folder_given_as_the_folder_of_scenes(enmap_case, tmp_path):
    """An unpacked product's folder holds one scene's layers: pairing it file by file would make a job of each."""
    from geolift.batch import pair_folders
    from geolift.errors import BatchError

    msi_dir = tmp_path / "s2"
    msi_dir.mkdir()
    shutil.copy(enmap_case[2], msi_dir)
    with pytest.raises(BatchError, match="is itself a product"):
        pair_folders(enmap_case[0], msi_dir, tmp_path / "out")
