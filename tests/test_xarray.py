"""The xarray API (:mod:`geolift.xarray`) on the Berlin sample: opening scenes as lazy DataArrays, fusing lazily,
computing windows chunk by chunk, writing with ``rio.to_raster`` and with geolift's writer (COG, STAC Item).

The reference is ``geolift fuse --dtype float32`` on the same pair with the same seed and steps: every chunk of the
lazy result must hold its bits. ``test_docs_walk_through`` runs the steps of ``docs/xarray.md``.
"""

from __future__ import annotations

import json

import dask
import dask.array as dsa
import numpy as np
import pytest
import rasterio
import xarray as xr
from helpers import BerlinPair, run_cli
from rasterio.windows import Window

import geolift.xarray as gx
from geolift.errors import InputError, MetadataError
from geolift.io import Encoding, open_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 100
CHUNK = 128  # the 660 x 494 output in 6 x 4 chunks


@pytest.fixture(scope="module")
def pair():
    berlin = BerlinPair()
    return gx.open_hsi(berlin.hsi_tif), gx.open_msi(berlin.msi_tif)


@pytest.fixture(scope="module")
def fused(pair):
    hsi, msi = pair
    return gx.fuse(hsi, msi, steps=STEPS, seed=0, chunks=CHUNK)


@pytest.fixture(scope="module")
def cli_float32(tmp_path_factory):
    """What ``geolift fuse`` writes for the pair, as float32 (the values before the int16 encoding)."""
    berlin = BerlinPair()
    out = tmp_path_factory.mktemp("cli") / "cli.tif"
    run = run_cli(["fuse", berlin.hsi_tif, berlin.msi_tif, "-o", out, "--steps", STEPS, "--seed", 0,
                   "--dtype", "float32", "--progress", "none"])
    assert run.exit_code == 0, run.stderr
    return out


@pytest.fixture
def chunks_computed(monkeypatch):
    """The windows (row_off, col_off) of the fused chunks predicted while the test runs (geolift.xarray.on_chunk)."""
    seen = []
    monkeypatch.setattr(gx, "on_chunk", lambda window: seen.append((int(window.row_off), int(window.col_off))))
    return seen


# ------------------------------------------------------------------------------------------------------ opening

def test_open_hsi_is_lazy_georeferenced_and_reads_what_geolift_reads(pair):
    hsi, msi = pair
    scene = open_scene(BerlinPair().hsi_tif)
    assert hsi.dims == ("band", "y", "x") and hsi.shape == (177, 80, 60) and hsi.dtype == np.float32
    assert isinstance(hsi.data, dsa.Array)
    assert hsi.rio.crs == scene.crs and hsi.rio.transform() == scene.transform
    assert hsi.x.values[0] == pytest.approx(scene.transform.c + 15) and hsi.y.values[0] == pytest.approx(
        scene.transform.f - 15)  # pixel centres
    np.testing.assert_array_equal(hsi["wavelength"].values, scene.wavelengths_nm)
    np.testing.assert_array_equal(hsi["fwhm"].values, scene.fwhm_nm)
    assert hsi["wavelength"].attrs["units"] == "nm" and hsi["fwhm"].attrs["units"] == "nm"
    assert list(hsi["band"].values) == list(scene.band_names)
    assert float(hsi.sel(wavelength=562, method="nearest")["wavelength"]) == 565.0
    # rioxarray's masked convention: NaN in the array, the file's nodata as the encoded value
    assert np.isnan(hsi.rio.nodata) and hsi.rio.encoded_nodata == -99.0
    np.testing.assert_array_equal(hsi.values, scene.read())
    assert msi.shape == (4, 660, 494) and msi.chunks[1] == (512, 148)  # the file's 64-px blocks, near 512
    eager = gx.open_msi(BerlinPair().msi_tif, lazy=False, chunks=None)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(eager.values, msi.values)
    assert gx.open_msi(BerlinPair().msi_tif, chunks=(100, 200)).chunks[1:] == ((100,) * 6 + (60,), (200, 200, 94))


def test_open_hsi_without_wavelengths_is_refused(tmp_path):
    from helpers import write_tif

    path = write_tif(tmp_path / "plain.tif", np.ones((3, 4, 4), np.float32), crs="EPSG:32633",
                     transform=rasterio.transform.from_origin(0, 40, 10, 10))
    with pytest.raises(MetadataError, match="no band wavelengths"):
        gx.open_hsi(path)


# ------------------------------------------------------------------------------------------------------ fusing

@pytest.mark.slow
def test_lazy_result_equals_geolift_fuse_chunk_by_chunk(fused, cli_float32):
    """Each chunk, computed alone, holds the bits ``geolift fuse --dtype float32`` writes for those pixels."""
    assert isinstance(fused.data, dsa.Array) and fused.chunks[1] == (128,) * 5 + (20,)
    blocks = fused.data.to_delayed()
    rows = np.cumsum((0, *fused.chunks[1]))
    cols = np.cumsum((0, *fused.chunks[2]))
    with rasterio.open(cli_float32) as ds:
        assert ds.crs == fused.rio.crs and ds.transform == fused.rio.transform()
        assert (ds.height, ds.width, ds.count) == fused.shape[1:] + fused.shape[:1]
        assert list(ds.descriptions) == list(fused.attrs["long_name"])
        for i in range(len(rows) - 1):
            for j in range(len(cols) - 1):
                window = Window(cols[j], rows[i], cols[j + 1] - cols[j], rows[i + 1] - rows[i])
                expected = ds.read(window=window)
                np.testing.assert_array_equal(blocks[0, i, j].compute(), expected)
        tags = ds.tags()
    assert json.loads(tags["geolift_report"])["refined"] and fused.geolift.report["refined"]
    for key in ("scale_factor_reflectance", "source", "geolift_consistency", "wavelength_units"):
        assert fused.attrs[key] == tags[key], key
    ours, cli = json.loads(fused.attrs["geolift_parameters"]), json.loads(tags["geolift_parameters"])
    differ = {k for k in ours if ours[k] != cli[k]}
    assert ours.keys() == cli.keys() and differ <= {"dtype", "overwrite", "torch_threads"}  # the CLI's choices


def test_a_window_computes_only_the_chunks_under_it(fused, chunks_computed):
    before = gx.chunks_predicted()
    one = fused.isel(y=slice(130, 250), x=slice(10, 120)).compute()  # inside chunk (1, 0)
    assert chunks_computed == [(128, 0)] and gx.chunks_predicted() - before == 1
    assert one.shape == (177, 120, 110) and np.isfinite(one.values).all()
    chunks_computed.clear()
    band = fused.sel(wavelength=860, method="nearest").isel(y=slice(100, 140), x=slice(100, 140)).compute()
    assert sorted(chunks_computed) == [(0, 0), (0, 128), (128, 0), (128, 128)]
    assert band.dims == ("y", "x") and float(band["wavelength"]) == pytest.approx(860, abs=5)
    chunks_computed.clear()
    whole = fused.sel(wavelength=860, method="nearest").values  # every chunk once
    assert len(chunks_computed) == 24 and len(set(chunks_computed)) == 24
    np.testing.assert_array_equal(band.values, whole[100:140, 100:140])


def test_rio_to_raster_writes_crs_grid_and_wavelengths(fused, tmp_path):
    window = fused.isel(y=slice(128, 256), x=slice(0, 200))
    window.rio.to_raster(tmp_path / "window.tif", tiled=True)
    with rasterio.open(tmp_path / "window.tif") as ds:
        assert ds.crs == fused.rio.crs and ds.count == 177 and (ds.height, ds.width) == (128, 200)
        # rioxarray derives a window's transform from its coordinates (3.600000000000117 m pixels, not 3.6)
        assert ds.transform.almost_equals(fused.rio.transform() @ ds.transform.translation(0, 128), precision=1e-9)
        assert ds.tags(177)["wavelength"] == "2409" and ds.descriptions[0] == "band 1 (460 nm)"
        np.testing.assert_array_equal(ds.read(), window.values)
    scene = open_scene(tmp_path / "window.tif")
    np.testing.assert_array_equal(scene.wavelengths_nm, fused["wavelength"].values)
    np.testing.assert_array_equal(scene.fwhm_nm, fused["fwhm"].values)
    some = fused.isel(band=[10, 50], y=slice(0, 64), x=slice(0, 64)).geolift.band_attrs()  # attrs follow the bands
    some.rio.to_raster(tmp_path / "two.tif")
    assert list(open_scene(tmp_path / "two.tif").wavelengths_nm) == list(fused["wavelength"].values[[10, 50]])


@pytest.mark.slow
def test_to_geotiff_writes_what_geolift_fuse_writes(fused, cli_float32, tmp_path):
    """int16 by default for the int16 HSI, as the CLI: the same values as encoding the CLI's float32 output."""
    out = fused.geolift.to_geotiff(tmp_path / "fused.tif")
    with rasterio.open(out) as ds, rasterio.open(cli_float32) as ref:
        assert ds.dtypes[0] == "int16" and ds.nodata == -32768 and ds.crs == ref.crs and ds.transform == ref.transform
        np.testing.assert_array_equal(ds.read(), Encoding(dtype="int16", scale=1.0, offset=0.0).encode(ref.read()))
        assert ds.descriptions == ref.descriptions and ds.tags(5) == ref.tags(5)
        assert ds.tags(5, ns="IMAGERY") == ref.tags(5, ns="IMAGERY")
        assert ds.tags()["geolift_parameters"] == fused.attrs["geolift_parameters"]
        assert ds.block_shapes[0] == (512, 512) and ds.compression.name.lower() == "deflate"
    small = fused.isel(y=slice(0, 40), x=slice(0, 40))
    with rasterio.open(gx.to_geotiff(small, tmp_path / "small.tif", dtype="float32", tile_size=16, compress="zstd",
                                     creation_options=["ZSTD_LEVEL=1"])) as ds:
        assert ds.dtypes[0] == "float32" and ds.block_shapes[0] == (16, 16) and ds.compression.name.lower() == "zstd"
        np.testing.assert_array_equal(ds.read(), small.values)
        assert ds.transform == fused.rio.transform()  # a window at the origin keeps the grid's exact transform


@pytest.mark.slow
def test_inputs_changed_in_memory_are_fused_like_files(pair, fused):
    """A DataArray that is not the file as opened (here loaded into memory) goes through a temporary GeoTIFF: the
    same training data, the same result."""
    hsi, msi = pair
    loaded = gx.fuse(hsi.load(), msi.load(), steps=STEPS, seed=0, chunks=CHUNK)
    assert loaded.geolift.report["hsi"] == [] and fused.geolift.report["hsi"]  # no temporary path in the report
    assert loaded.attrs["geolift_encoding"] == fused.attrs["geolift_encoding"]  # int16, as for the int16 file
    np.testing.assert_array_equal(loaded.isel(y=slice(200, 300), x=slice(300, 400)).values,
                                  fused.isel(y=slice(200, 300), x=slice(300, 400)).values)


@pytest.mark.slow
def test_a_hand_built_dataarray_with_a_crs_and_wavelengths_is_fused_like_the_file(pair, fused):
    """Arrays built from numpy (no geolift attributes, no written transform: it is derived from x/y) give the same
    bits as the file they hold."""
    hsi, msi = pair
    plain = xr.DataArray(hsi.values, dims=("band", "y", "x"),
                         coords={"band": np.arange(1, 178), "y": hsi.y.values, "x": hsi.x.values,
                                 "wavelength": ("band", hsi.wavelength.values),
                                 "fwhm": ("band", hsi.fwhm.values)}).rio.write_crs("EPSG:32633")
    out = gx.fuse(plain, msi, steps=STEPS, seed=0, chunks=CHUNK)
    assert out.shape == fused.shape and out.rio.crs == fused.rio.crs and out.rio.transform() == fused.rio.transform()
    assert json.loads(out.attrs["geolift_encoding"])["dtype"] == "float32"  # nothing says the values were int16
    window = {"y": slice(300, 360), "x": slice(200, 260)}
    np.testing.assert_array_equal(out.isel(window).values, fused.isel(window).values)


@pytest.mark.slow
def test_a_dask_cluster_computes_the_same_chunks(pair, fused):
    """Worker processes get the plan (and a temporary input's path) through pickling and predict the same bits."""
    from distributed import Client

    from geolift.batch import start_local_cluster

    hsi, msi = pair
    in_memory = gx.fuse(hsi.load(), msi, steps=STEPS, seed=0, chunks=CHUNK)
    window = {"y": slice(200, 400), "x": slice(100, 300)}
    expected = fused.isel(window).values
    cluster = start_local_cluster(n_workers=1, torch_threads=1)
    try:
        with Client(cluster):
            np.testing.assert_array_equal(fused.isel(window).compute().values, expected)
            np.testing.assert_array_equal(in_memory.isel(window).compute().values, expected)
    finally:
        cluster.close()


def test_bad_inputs_raise_geolift_errors(pair):
    hsi, msi = pair
    with pytest.raises(InputError, match="must be an xarray.DataArray"):
        gx.fuse(hsi.values, msi)
    with pytest.raises(InputError, match=r"dimensions \(band, y, x\)"):
        gx.fuse(hsi.transpose("y", "x", "band"), msi)
    with pytest.raises(MetadataError, match="no CRS"):
        gx.fuse(hsi, xr.DataArray(msi.values, dims=("band", "y", "x")))
    with pytest.raises(MetadataError, match="'wavelength' coordinate"):
        gx.fuse(hsi.drop_vars("wavelength"), msi)
    with pytest.raises(InputError, match="Unknown fusion option"):
        gx.fuse(hsi, msi, step=10)
    with pytest.raises(InputError, match="chunks must be"):
        gx.fuse(hsi, msi, chunks=0)
    with pytest.raises(InputError, match="chunks must be"):
        gx.open_msi(BerlinPair().msi_tif, chunks=(64, -1))
    with pytest.raises(InputError, match="stac_datetime"):
        gx.to_geotiff(hsi, "x.tif", stac_datetime="2020-01-01")


# ------------------------------------------------------------------------------------------------------ docs

@pytest.mark.slow
def test_docs_walk_through(tmp_path, chunks_computed):
    """The steps of docs/xarray.md: open, fuse lazily, a window and a wavelength, a COG and a STAC Item."""
    from test_stac import assert_valid_item

    berlin = BerlinPair()
    hsi = gx.open_hsi(berlin.hsi_tif)
    msi = gx.open_msi(berlin.msi_tif)
    fused = gx.fuse(hsi, msi, steps=STEPS, seed=0)  # trains and prepares the consistency step now
    assert fused.shape == (177, 660, 494) and fused.chunks[1] == (512, 148)
    nir = fused.sel(wavelength=860, method="nearest").isel(y=slice(0, 200), x=slice(0, 200)).compute()
    assert float(nir["wavelength"]) == 864.0
    assert chunks_computed == [(0, 0)] and nir.shape == (200, 200) and float(nir.mean()) > 1000  # reflectance x 10000
    window = fused.isel(y=slice(0, 256), x=slice(0, 256))
    cog = window.geolift.to_geotiff(tmp_path / "berlin_window.tif", cog=True, stac=tmp_path / "berlin_window.json",
                                    stac_datetime="2009-08-20")
    with rasterio.open(cog) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and (ds.height, ds.width, ds.count) == (256, 256, 177)
        assert ds.tags(177)["wavelength"] == "2409"
    item = json.loads((tmp_path / "berlin_window.json").read_text())
    assert_valid_item(item)
    assert item["properties"]["proj:shape"] == [256, 256] and item["properties"]["geolift:refined"] is True
    assert item["assets"]["data"]["type"].endswith("profile=cloud-optimized")
    assert {link["title"] for link in item["links"] if link["rel"] == "derived_from"} == {"HSI", "MSI"}
    with dask.config.set(scheduler="synchronous"):
        assert np.isfinite(window.isel(band=0).values).all()
