"""STAC Items and Collections for geolift outputs (``--stac``), validated offline against the official schemas.

The schemas (STAC 1.0.0 core, eo/raster/projection v1.1.0, GeoJSON) are bundled in ``tests/data/stac_schemas`` (see
its PROVENANCE.md) and registered under their ``$id``s, so ``jsonschema`` resolves every ``$ref`` without a network;
each Item is checked against the core schema and the schema of every extension it declares, as STAC validators do,
with RFC 3339 date-time formats checked too. ``pystac`` then reads each Item through its extension classes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from helpers import ONE_NETWORK, BerlinPair, run_cli, temp_leftovers
from jsonschema import Draft7Validator
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.transform import from_origin
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from geolift import stac
from geolift.errors import InputError, OutputError
from geolift.io import write_hsi

SCHEMAS = Path(__file__).resolve().parent / "data" / "stac_schemas"
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json"
COLLECTION_SCHEMA = "https://schemas.stacspec.org/v1.0.0/collection-spec/json-schema/collection.json"
WALD_ARGS = ["--sensor", "sentinel2a", "--bands", "B2,B3,B4,B8", "--steps", 30, *ONE_NETWORK, "--progress", "none"]


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"].rstrip("#"), Resource.from_contents(schema, default_specification=DRAFT7)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def schema_errors(document: dict, schema: str) -> list[str]:
    validator = Draft7Validator({"$ref": schema}, registry=REGISTRY, format_checker=Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(document)]


def assert_valid_item(item: dict) -> pystac.Item:
    assert item["stac_version"] == "1.0.0"
    for schema in [ITEM_SCHEMA, *item["stac_extensions"]]:
        assert schema_errors(item, schema) == [], schema
    return pystac.Item.from_dict(item)


def assert_valid_collection(collection: dict) -> None:
    assert schema_errors(collection, COLLECTION_SCHEMA) == []
    pystac.Collection.from_dict(collection)


def resolve(href: str, document: Path) -> Path:
    return (document.parent / href).resolve()


def test_the_bundled_schemas_catch_mistakes():
    """The validation itself is real: a wrong type, a missing time and a bad date are each reported."""
    item = {"type": "Feature", "stac_version": "1.0.0", "stac_extensions": [stac.EXTENSIONS["projection"]],
            "id": "x", "geometry": {"type": "Point", "coordinates": [13.3, 52.5]}, "bbox": [13.3, 52.5, 13.3, 52.5],
            "properties": {"datetime": "2009-08-20T00:00:00Z", "proj:epsg": 32633}, "links": [], "assets": {}}
    assert schema_errors(item, ITEM_SCHEMA) == [] and schema_errors(item, stac.EXTENSIONS["projection"]) == []
    assert schema_errors(item | {"properties": {"datetime": "2009-08-20T00:00:00Z", "proj:epsg": "32633"}},
                         stac.EXTENSIONS["projection"])
    assert schema_errors(item | {"properties": {"datetime": None}}, ITEM_SCHEMA)
    assert schema_errors(item | {"properties": {"datetime": "20 August 2009"}}, ITEM_SCHEMA)


# ------------------------------------------------------------------------------------------------- fuse --stac


@pytest.mark.usefixtures("one_torch_thread")
def test_fuse_writes_a_valid_item_that_matches_the_file(wald, tmp_path):
    out, qa, item_path = tmp_path / "fused.tif", tmp_path / "fused_qa.tif", tmp_path / "meta" / "item.json"
    item_path.parent.mkdir()
    run = run_cli(["fuse", wald.hsi, wald.msi, "-o", out, "--qa", qa, "--stac", item_path, *WALD_ARGS])
    assert run.exit_code == 0, run.stderr
    item = json.loads(item_path.read_text())
    parsed = assert_valid_item(item)
    assert item["id"] == "fused" and set(item["stac_extensions"]) == set(stac.EXTENSIONS.values())

    data = item["assets"]["data"]
    assert data["href"] == "../fused.tif" and resolve(data["href"], item_path) == out.resolve()
    assert data["type"] == "image/tiff; application=geotiff" and data["roles"] == ["data"]
    assert resolve(item["assets"]["qa"]["href"], item_path) == qa.resolve()
    with rasterio.open(out) as ds:
        wavelengths = [float(ds.tags(i + 1)["wavelength"]) for i in range(ds.count)]
        fwhm = [float(ds.tags(i + 1)["fwhm"]) for i in range(ds.count)]
        eo = EOExtension.ext(parsed.assets["data"]).bands
        assert len(eo) == ds.count == 218
        np.testing.assert_allclose([b.center_wavelength for b in eo], np.array(wavelengths) / 1000, rtol=1e-6)
        np.testing.assert_allclose([b.full_width_half_max for b in eo], np.array(fwhm) / 1000, rtol=1e-6)
        assert eo[0].name == "band 1"
        raster = data["raster:bands"]
        assert [b["data_type"] for b in raster] == list(ds.dtypes)
        assert {b["nodata"] for b in raster} == {"nan"} and np.isnan(ds.nodata)  # float32 output: NaN nodata
        assert [b["scale"] for b in raster] == list(ds.scales) and [b["offset"] for b in raster] == list(ds.offsets)
        projection = ProjectionExtension.ext(parsed)
        assert projection.epsg == ds.crs.to_epsg() and projection.shape == [ds.height, ds.width]
        assert projection.transform == list(ds.transform)[:6]
        # the WGS84 footprint holds the projected corners, transformed independently here with pyproj
        from pyproj import Transformer

        to_wgs84 = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        for x, y in [(ds.bounds.left, ds.bounds.top), (ds.bounds.right, ds.bounds.bottom)]:
            lon, lat = to_wgs84.transform(x, y)
            west, south, east, north = item["bbox"]
            assert west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6
    assert len(item["geometry"]["coordinates"][0]) == 4 * 20 + 1  # densified edges, closed ring
    assert 12.9 < item["bbox"][0] < 13.2 and 52.3 < item["bbox"][1] < 52.5  # Potsdam

    links = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [resolve(link["href"], item_path) for link in links] == [wald.hsi.resolve(), wald.msi.resolve()]
    props = item["properties"]
    assert props["datetime"] is None and props["geolift:datetime_source"] == "unknown"  # the Wald files say nothing
    assert props["start_datetime"] == stac.UNKNOWN_START and "neither input" in props["geolift:datetime_note"]
    assert props["geolift:seed"] == 0 and props["geolift:steps"] == 30 and props["geolift:preset"] == "geolift"
    assert props["geolift:options"]["bands"] == ["B2", "B3", "B4", "B8"] and props["geolift:version"]
    assert temp_leftovers(tmp_path) == [] and not list(item_path.parent.glob(".*"))


@pytest.mark.usefixtures("one_torch_thread")
def test_fuse_stac_datetime_and_mistakes_stop_before_any_work(wald, tmp_path):
    out, item_path = tmp_path / "fused.tif", tmp_path / "item.json"
    run = run_cli(["fuse", wald.hsi, wald.msi, "-o", out, "--stac", item_path, "--stac-datetime",
                   "2022-07-24T10:45:26Z", *WALD_ARGS])
    assert run.exit_code == 0, run.stderr
    item = json.loads(item_path.read_text())
    assert_valid_item(item)
    assert item["properties"]["datetime"] == "2022-07-24T10:45:26Z"
    assert item["properties"]["geolift:datetime_source"] == "user"
    before = item_path.read_bytes()
    for args, message in [
        (["--stac", item_path], "already exists"),  # an Item is replaced only with --overwrite
        (["--stac", tmp_path / "new.json", "--stac-datetime", "yesterday"], "not an ISO 8601"),
        (["--stac-datetime", "2022-07-24"], "add --stac"),
        (["--stac", tmp_path / "no" / "item.json"], "does not exist"),
        (["--stac", wald.hsi], "is one of the inputs"),
    ]:
        run = run_cli(["fuse", wald.hsi, wald.msi, "-o", tmp_path / "other.tif", *args, *WALD_ARGS])
        assert run.exit_code in (2, 5) and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and "Trained" not in run.stderr
        assert not (tmp_path / "other.tif").exists()
    assert item_path.read_bytes() == before


# ---------------------------------------------------------------------------------------- Items from files


def write_output(path: Path, *, crs="EPSG:32633", report: dict | None = None, dtype="int16") -> Path:
    data = np.random.default_rng(0).uniform(0, 0.5, (3, 40, 50)).astype(np.float32)
    return write_hsi(path, data, crs=crs, transform=from_origin(383469.97, 5818303.55, 30.0, 30.0),
                     wavelengths_nm=[480.0, 560.0, 665.0], fwhm_nm=[20.0, 25.0, 30.0], dtype=dtype,
                     scale=1e-4 if dtype == "int16" else None, tags={"geolift_report": json.dumps(report or {})})


def test_item_of_an_int16_output_in_a_crs_without_epsg_code(tmp_path):
    laea = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs +type=crs"
    out = write_output(tmp_path / "laea.tif", crs=laea, report={
        "hsi": [str(tmp_path / "in" / "hsi.tif")], "msi": ["/vsis3/bucket/msi.tif"],
        "hsi_product": {"product_name": "ENMAP01-L2A", "acquisition_time": "2022-07-24T10:45:26Z"},
        "msi_product": {"acquisition_time": "2022-07-26T10:20:00+0000"}, "options": {"seed": 3, "preset": "geolift"}})
    item = stac.item_for_output(out, tmp_path / "laea.json")
    parsed = assert_valid_item(item)
    props = item["properties"]
    assert props["proj:epsg"] is None and "Lambert Azimuthal Equal Area" in props["proj:wkt2"]
    assert rasterio.crs.CRS.from_wkt(props["proj:wkt2"]) == rasterio.crs.CRS.from_string(laea)
    assert props["datetime"] == "2022-07-24T10:45:26Z"  # the HSI's time; the range spans both acquisitions
    assert (props["start_datetime"], props["end_datetime"]) == ("2022-07-24T10:45:26Z", "2022-07-26T10:20:00Z")
    assert props["geolift:hsi_product"]["product_name"] == "ENMAP01-L2A" and props["geolift:seed"] == 3
    raster = RasterExtension.ext(parsed.assets["data"]).bands
    assert [(b.data_type, b.nodata, b.scale, b.offset) for b in raster] == [("int16", -32768, 1e-4, 0.0)] * 3
    assert [link["href"] for link in item["links"]] == ["./in/hsi.tif", "s3://bucket/msi.tif"]
    assert "gsd" in props and props["gsd"] == 30.0


@pytest.mark.parametrize("report, given, expected", [
    ({"msi_product": {"acquisition_time": "2022-07-26T10:20:00Z"}}, None,
     {"datetime": None, "start_datetime": "2022-07-26T10:20:00Z", "end_datetime": "2022-07-26T10:20:00Z",
      "geolift:datetime_source": "msi"}),
    ({"hsi_product": {"acquisition_time": "2022-07-24"}}, None,
     {"datetime": "2022-07-24T00:00:00Z", "geolift:datetime_source": "hsi"}),
    ({"hsi_product": {"acquisition_time": "2022-07-24"}}, "2009-08-20/2009-08-21T12:00:00+02:00",
     {"datetime": None, "start_datetime": "2009-08-20T00:00:00Z", "end_datetime": "2009-08-21T10:00:00Z",
      "geolift:datetime_source": "user"}),
    ({}, None, {"datetime": None, "start_datetime": stac.UNKNOWN_START, "end_datetime": "2026-01-02T03:04:05Z",
                "geolift:datetime_source": "unknown"}),
])
def test_item_times_come_from_the_inputs_and_are_never_invented(report, given, expected):
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    props = stac.item_datetime(report, given, now)
    assert {k: v for k, v in props.items() if k != "geolift:datetime_note"} == expected
    assert ("geolift:datetime_note" in props) == (expected["geolift:datetime_source"] in ("msi", "unknown"))


def test_unreadable_outputs_and_unwritable_items_leave_no_file(tmp_path):
    text = tmp_path / "not_a_raster.tif"
    text.write_text("no")
    with pytest.raises(InputError, match="Cannot read"):
        stac.write_item(text, tmp_path / "item.json")
    with pytest.raises(OutputError, match="Cannot write"):
        stac.write_json_atomic({"value": float("nan")}, tmp_path / "item.json")  # JSON has no NaN
    with pytest.raises(OutputError, match="does not exist"):
        stac.write_json_atomic({}, tmp_path / "missing" / "item.json")
    assert sorted(os.listdir(tmp_path)) == ["not_a_raster.tif"]


# ----------------------------------------------------------------------------- the done-when of issue 18


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_berlin_fuse_cog_and_stac(tmp_path):
    """``geolift fuse … --cog --stac item.json`` on the Berlin sample: a COG (GDAL says LAYOUT=COG, overviews,
    wavelength tags) and an Item that validates."""
    berlin = BerlinPair()
    out, item_path = tmp_path / "berlin.tif", tmp_path / "item.json"
    run = run_cli(["fuse", berlin.hsi_tif, berlin.msi_tif, "-o", out, "--cog", "--stac", item_path,
                   "--stac-datetime", "2009-08-20", "--steps", 40, *ONE_NETWORK, "--progress", "none"])
    assert run.exit_code == 0, run.stderr
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2]
        assert ds.tags(177)["wavelength"] == "2409" and ds.tags(177, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]
    item = json.loads(item_path.read_text())
    parsed = assert_valid_item(item)
    assert item["assets"]["data"]["type"].endswith("profile=cloud-optimized")
    assert EOExtension.ext(parsed.assets["data"]).bands[-1].center_wavelength == pytest.approx(2.409)
    assert item["properties"]["datetime"] == "2009-08-20T00:00:00Z" and item["properties"]["proj:epsg"] == 32633
    assert item["properties"]["proj:shape"] == [660, 494]


# ------------------------------------------------------------------------------------------------------- batch


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client

    from geolift.batch import start_local_cluster

    cluster = start_local_cluster(n_workers=1, torch_threads=1)
    with Client(cluster) as client:
        yield client
    cluster.close()


@pytest.mark.slow
def test_batch_cog_creation_options_and_stac_collection(wald, dask_client, tmp_path):
    """Two jobs with --cog --co --stac --qa: every output a COG with the option, an Item each and a Collection
    that validate, the Collection's extent covering both; a rerun skips the jobs and still describes them."""
    from geolift.batch.cluster import _has_bokeh

    manifest = tmp_path / "jobs.csv"
    manifest.write_text("hsi,msi,sensor,bands,output,steps,seed\n"
                        f"{wald.hsi},{wald.msi},sentinel2a,B2 B3 B4 B8,first.tif,20,1\n"
                        f"{wald.hsi},{wald.msi},sentinel2a,B2 B3 B4 B8,sub/second.tif,20,2\n")
    outdir = tmp_path / "out"
    args = ["batch", manifest, "-o", outdir, "--scheduler", dask_client.scheduler.address, "--cog", "--tile-size",
            128, "--co", "COMPRESS=ZSTD", "--stac", "--qa", "--progress", "none"]
    run = run_cli(args)
    assert run.exit_code == 0, run.stderr
    # a cluster that serves the dashboard (bokeh installed: the dashboard extra) is announced with its link
    assert ("geolift: Dask dashboard: http" in run.stderr) == _has_bokeh(), run.stderr

    outputs = [outdir / "first.tif", outdir / "sub" / "second.tif"]
    for out in outputs:
        with rasterio.open(out) as ds:
            structure = ds.tags(ns="IMAGE_STRUCTURE")
            assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "ZSTD"
    collection = json.loads((outdir / "collection.json").read_text())
    assert_valid_collection(collection)
    item_links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert item_links == ["./first.stac.json", "./sub/second.stac.json"]
    items = [json.loads((outdir / href).read_text()) for href in item_links]
    for item, out, href in zip(items, outputs, item_links):
        assert_valid_item(item)
        assert resolve(item["assets"]["data"]["href"], outdir / href) == out
        assert item["assets"]["data"]["type"].endswith("profile=cloud-optimized")
        assert item["assets"]["qa"]["href"].endswith("_qa.tif")
        assert item["collection"] == collection["id"]
        assert resolve(next(lk["href"] for lk in item["links"] if lk["rel"] == "collection"), outdir / href) == \
            (outdir / "collection.json")
        assert item["properties"]["geolift:options"]["creation_options"] == ["COMPRESS=ZSTD"]
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    for item in items:
        assert west <= item["bbox"][0] and south <= item["bbox"][1] and east >= item["bbox"][2] \
            and north >= item["bbox"][3]
    assert collection["extent"]["temporal"]["interval"] == [[None, None]]  # no input says when

    (outdir / "first.stac.json").unlink()
    run = run_cli(args)
    assert run.exit_code == 0, run.stderr
    rows = json.loads((outdir / "batch_report.json").read_text())["jobs"]
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert_valid_item(json.loads((outdir / "first.stac.json").read_text()))  # made again from the file

    bad = run_cli([*args[:-8], "--co", "PREDICTOR=7", "--progress", "none"])
    assert bad.exit_code == 5 and "PREDICTOR" in bad.stderr and "Traceback" not in bad.stderr
