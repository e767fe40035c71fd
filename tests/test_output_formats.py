"""Output formats: Cloud-Optimized GeoTIFF (--cog), GDAL creation options (--co) and GDAL_* environment variables.

Every file here is written for real and checked with GDAL itself (the ``LAYOUT=COG`` item GDAL reports in the
IMAGE_STRUCTURE metadata domain, the overviews) and with rio-cogeo's validator (a test dependency).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import rasterio
from helpers import ONE_NETWORK, BerlinPair, run_cli, temp_leftovers
from rasterio.transform import from_origin
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from geolift.errors import OutputError
from geolift.grid import Grid
from geolift.io import Encoding, HSIWriter, OutputBands, write_hsi
from geolift.io.gdal_options import REFUSED, check_creation_options, driver_options, parse_creation_options

UTM33 = "EPSG:32633"
WAVES = [450.5, 512.3, 600.0, 880.25, 1650.0]
FWHM = [10.0, 11.5, 12.0, 15.0, 20.0]
GOOD = [True, True, True, False, True]
BANDS = OutputBands(WAVES, FWHM, good=GOOD)
GRID = Grid(UTM33, from_origin(383469.97, 5818303.55, 3.6, 3.6), 300, 250)


def cube(rows=250, cols=300, seed=3):
    data = np.random.default_rng(seed).uniform(0.0, 0.6, (5, rows, cols)).astype(np.float32)
    data[:, 3, 4] = np.nan
    return data


def write(path, data, **encoding):
    return write_hsi(path, data, crs=UTM33, transform=from_origin(383469.97, 5818303.55, 3.6, 3.6),
                     wavelengths_nm=WAVES, fwhm_nm=FWHM, good_bands=GOOD, tags={"geolift_report": '{"a": 1}'},
                     parameters={"steps": 5}, **encoding)


def assert_cog(path):
    """GDAL's own word (LAYOUT=COG, overviews) and rio-cogeo's validator."""
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert len(ds.overviews(1)) > 0
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    assert valid, errors


def metadata(path):
    with rasterio.open(path) as ds:
        return {"crs": ds.crs, "transform": ds.transform, "nodata": repr(ds.nodata), "dtype": ds.dtypes[0],
                "descriptions": ds.descriptions, "scales": ds.scales, "offsets": ds.offsets,
                "band_tags": [ds.tags(i + 1) for i in range(ds.count)],
                "imagery": [ds.tags(i + 1, ns="IMAGERY") for i in range(ds.count)],
                "tags": {k: v for k, v in ds.tags().items()}}


# ---------------------------------------------------------------------------------------------------------- COG


@pytest.mark.parametrize("dtype, scale", [("float32", None), ("int16", 1e-4)])
def test_cog_keeps_pixels_and_every_piece_of_metadata_of_the_plain_file(tmp_path, dtype, scale):
    data = cube()
    plain = write(tmp_path / "plain.tif", data, dtype=dtype, scale=scale, tile=128)
    cog = write(tmp_path / "cog.tif", data, dtype=dtype, scale=scale, tile=128, cog=True)
    assert_cog(cog)
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == [2, 4]  # halving until the smallest (75 x 63 px) fits one 128-px tile
        assert ds.block_shapes[0] == (128, 128)
        assert ds.tags(1, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"] == "0.4505"
        overview = ds.read(1, out_shape=(63, 75))
    assert metadata(cog) == metadata(plain)
    with rasterio.open(plain) as a, rasterio.open(cog) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    if dtype == "float32":  # overviews average valid pixels only: the one NaN pixel does not spread
        assert np.isfinite(overview).all()
    assert sorted(os.listdir(tmp_path)) == ["cog.tif", "plain.tif"]  # no temporary file left


def test_a_cog_that_cannot_be_made_leaves_the_old_output_and_no_temporary_file(tmp_path):
    out = write(tmp_path / "fused.tif", cube(), tile=128)
    before = out.read_bytes()
    # GDAL refuses JPEG for five float bands; a small probe says so before anything is written
    with pytest.raises(OutputError, match="GDAL cannot write this output with COMPRESS=JPEG"):
        write(out, cube(seed=4), tile=128, cog=True, options=["COMPRESS=JPEG"], overwrite=True)
    # the tiled temporary file vanishes before the COG copy reads it (another process cleaned the folder)
    data = cube(seed=5)
    with pytest.raises(OutputError, match="Cloud-Optimized GeoTIFF failed"):
        with HSIWriter(out, GRID, BANDS, Encoding(tile=128, cog=True), overwrite=True) as writer:
            writer.write_block(data, Window(0, 0, 300, 250))
            writer.temp_path.unlink()
    assert out.read_bytes() == before
    assert temp_leftovers(tmp_path) == [] and os.listdir(tmp_path) == ["fused.tif"]


def test_cog_options_follow_the_encoding_and_the_user_options():
    with pytest.raises(OutputError, match="at least 128 px"):
        Encoding(tile=64, cog=True)
    options = Encoding(dtype="int16", tile=256, compress="zstd", cog=True).cog_options
    assert options["BLOCKSIZE"] == "256" and options["COMPRESS"] == "ZSTD" and options["PREDICTOR"] == "YES"
    assert options["OVERVIEW_RESAMPLING"] == "AVERAGE"
    user = Encoding(cog=True, options=["PREDICTOR=2", "level=9", "OVERVIEW_RESAMPLING=nearest"]).cog_options
    assert user["PREDICTOR"] == "STANDARD" and user["LEVEL"] == "9" and user["OVERVIEW_RESAMPLING"] == "NEAREST"
    # the temporary GeoTIFF the COG is copied from keeps geolift's own (GTiff) options
    assert "LEVEL" not in Encoding(cog=True, options=["LEVEL=9"]).creation_options


# ------------------------------------------------------------------------------------------ creation options


def test_creation_options_override_geolift_defaults(tmp_path):
    out = write(tmp_path / "z.tif", cube(), options=["COMPRESS=ZSTD", "zstd_level=9", "INTERLEAVE=PIXEL",
                                                     "BIGTIFF=YES"])
    with rasterio.open(out) as ds:
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] == "ZSTD" and structure["INTERLEAVE"] == "PIXEL"
        assert structure["PREDICTOR"] == "3"  # geolift's float predictor still applies to ZSTD
        np.testing.assert_array_equal(ds.read(), cube())
    assert out.read_bytes()[2] == 43  # BigTIFF
    lerc = Encoding(options=["COMPRESS=LERC_ZSTD", "MAX_Z_ERROR=0.001"]).creation_options
    assert "PREDICTOR" not in lerc  # no predictor for a compression that has none
    assert Encoding(options={"predictor": "1"}).creation_options["PREDICTOR"] == "1"


@pytest.mark.parametrize("items, driver, message", [
    (["COMPRESS"], "GTiff", "not NAME=VALUE"),
    (["=ZSTD"], "GTiff", "not a GDAL option name"),
    (["ZSTD_LEVEL="], "GTiff", "has no value"),
    (["COMPRES=ZSTD"], "GTiff", "not a creation option of GDAL's GTiff driver .did you mean COMPRESS"),
    (["COMPRESS=ZIP"], "GTiff", "cannot be 'ZIP'; GDAL here accepts NONE, LZW"),
    (["ZSTD_LEVEL=high"], "GTiff", "must be an integer"),
    (["SPARSE_OK=maybe"], "GTiff", "must be YES or NO"),
    (["OVERVIEW_RESAMPLING=smooth"], "COG", "use one of NEAREST, AVERAGE"),
    (["MAX_Z_ERROR=a lot"], "GTiff", "must be a number"),
    (["TILED=NO"], "GTiff", "always writes a tiled GeoTIFF"),
    (["BLOCKXSIZE=256"], "GTiff", "--tile-size"),
    (["NBITS=12"], "GTiff", "cut the stored values"),
    (["BLOCKSIZE=1024"], "COG", "--tile-size"),
    (["TARGET_SRS=EPSG:4326"], "COG", "MSI's grid"),
    (["INTERLEAVE=BAND"] if "INTERLEAVE" not in (driver_options("COG") or {}) else ["BLOCKSIZE=1"], "COG",
     "INTERLEAVE is not a creation option" if "INTERLEAVE" not in (driver_options("COG") or {}) else "tile-size"),
])
def test_bad_creation_options_are_refused_with_the_reason(items, driver, message):
    with pytest.raises(OutputError, match=message):
        check_creation_options(parse_creation_options(items), driver)


def test_the_option_list_is_gdals_own():
    gtiff = driver_options("GTiff")
    assert gtiff is not None, "GDAL's creation option list could not be read (the fallback would apply)"
    assert {"COMPRESS", "PREDICTOR", "ZSTD_LEVEL", "BIGTIFF"} <= set(gtiff)
    assert "ZSTD" in gtiff["COMPRESS"].values
    cog = driver_options("COG")
    assert cog["PREDICTOR"].aliases == {"2": "STANDARD", "3": "FLOATING_POINT"}
    assert set(REFUSED["GTiff"]) <= set(gtiff) and set(REFUSED["COG"]) <= set(cog)  # refusals name real options


def test_options_gdal_refuses_for_the_data_fail_on_a_probe():
    with pytest.raises(OutputError, match="COMPRESS=JPEG .*JPEG"):
        Encoding(dtype="int16", options=["COMPRESS=JPEG"]).probe(177)
    Encoding(dtype="int16", options=["COMPRESS=LZMA"], cog=True).probe(177)  # a working one passes


# ----------------------------------------------------------------------------------- GDAL_* environment


def test_gdal_num_threads_from_the_environment_wins_over_geolift_default(monkeypatch):
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    assert Encoding(num_threads=4).creation_options["NUM_THREADS"] == "4"
    monkeypatch.setenv("GDAL_NUM_THREADS", "1")
    assert "NUM_THREADS" not in Encoding(num_threads=4).creation_options  # GDAL reads the variable itself
    assert "NUM_THREADS" not in Encoding(num_threads=4, cog=True).cog_options
    assert Encoding(options=["NUM_THREADS=3"]).creation_options["NUM_THREADS"] == "3"  # --co wins over both
    monkeypatch.delenv("GDAL_NUM_THREADS")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):  # a GDAL config option set by a rasterio user counts too
        assert "NUM_THREADS" not in Encoding().creation_options


@pytest.mark.parametrize("cog", [False, True])
def test_gdal_environment_variables_reach_the_writer(tmp_path, monkeypatch, cog):
    # GDAL_TIFF_ENDIANNESS is a GDAL config option the GTiff driver reads when it creates a file: set in the
    # environment, it shows in the output's first bytes (big-endian "MM"), plain or COG.
    monkeypatch.setenv("GDAL_TIFF_ENDIANNESS", "BIG")
    out = write(tmp_path / "big_endian.tif", cube(), tile=128, cog=cog)
    assert out.read_bytes()[:2] == b"MM"
    monkeypatch.delenv("GDAL_TIFF_ENDIANNESS")
    assert write(tmp_path / "native.tif", cube(), tile=128, cog=cog).read_bytes()[:2] == b"II"
    with rasterio.open(out) as a, rasterio.open(tmp_path / "native.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


# ------------------------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_fuse_cog_on_the_berlin_sample(tmp_path):
    berlin = BerlinPair()
    run = run_cli(["fuse", berlin.hsi_tif, berlin.msi_tif, "-o", tmp_path / "fused.tif", "--cog", "--steps", 40,
                   *ONE_NETWORK,
                   "--progress", "none", "--report", tmp_path / "report.json", "--co", "LEVEL=6"])
    assert run.exit_code == 0, run.stderr
    out = tmp_path / "fused.tif"
    assert_cog(out)
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (494, 660, 177)
        assert ds.tags(1)["wavelength"] == "460" and ds.tags(1, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"] == "0.46"
        report = json.loads(ds.tags()["geolift_report"])
        assert report["options"]["cog"] is True and report["options"]["creation_options"] == ["LEVEL=6"]
    assert json.loads((tmp_path / "report.json").read_text())["cog_seconds"] > 0
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--co", "COMPRESS=ZIP"], "COMPRESS .GDAL GTiff creation option. cannot be 'ZIP'"),
    (["--co", "TILED=NO"], "TILED is not accepted"),
    (["--cog", "--co", "TARGET_SRS=EPSG:4326"], "TARGET_SRS is not accepted"),
    (["--co", "COMPRESS=JPEG"], "GDAL cannot write this output with COMPRESS=JPEG"),  # int16 Berlin: probed
    (["--co", "NOEQUALS"], "not NAME=VALUE"),
])
def test_fuse_refuses_bad_output_options_before_any_work(tmp_path, args, message):
    berlin = BerlinPair()
    run = run_cli(["fuse", berlin.hsi_tif, berlin.msi_tif, "-o", tmp_path / "fused.tif", "--progress", "none",
                   *args])
    assert run.exit_code == 5
    assert any(line.startswith("geolift: error:") for line in run.stderr.splitlines())
    assert re.search(message, run.stderr), run.stderr
    assert "Traceback" not in run.stderr and "Trained" not in run.stderr
    assert os.listdir(tmp_path) == []
