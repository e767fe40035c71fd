"""STAC items as the MSI: miniature Earth Search (sentinel-2-l2a) and Planetary Computer (landsat-c2-l2) items, with
the catalogues' real structure (asset keys, eo:bands, raster:bands, roles, the scl and qa_pixel assets, a rendered
visual asset, a JP2 duplicate), pointing at small GeoTIFFs written here, read straight into geolift; also served over
HTTP from this machine, and fused end to end without --sensor or --bands."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import geolift_log, read_potsdam_cube, run_fuse, write_tif

from geolift import evaluate, srf
from geolift.errors import InputError, MetadataError, SensorError
from geolift.io import open_scene
from geolift.io.products import stac

ITEM_ID = "S2A_33UUU_20220727_0_L2A"
START = "2022-07-27T10:15:37.024000Z"
SCALE, OFFSET = 1e-4, -0.1  # Earth Search's raster:bands for processing baseline >= 04.00
TEN_M = {"blue": ("B02", "B2", 0.49, 0.098), "green": ("B03", "B3", 0.56, 0.045),
         "red": ("B04", "B4", 0.665, 0.038), "nir": ("B08", "B8", 0.842, 0.145)}
CORNER = (slice(0, 2), slice(0, 2))  # DN 0 (no data) in every 10 m band
# SCL at 20 m: class 9 (cloud, high probability) on 2 x 2 pixels and 8 (medium) on one, 3 (shadow), 10 (thin
# cirrus), 6 (water: not a mask) on one each. At 10 m each is 2 x 2 pixels.
SCL_CLASSES = [((slice(4, 6), slice(10, 12)), 9), ((6, 14), 8), ((8, 3), 3), ((14, 30), 10), ((12, 20), 6)]
EO_V1, RASTER_V1 = "https://stac-extensions.github.io/eo/v1.1.0/schema.json", \
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _dn(reflectance: np.ndarray, scale: float, offset: float) -> np.ndarray:
    return np.clip(np.rint((reflectance - offset) / scale), 1, 65535).astype(np.uint16)


def _write(path: Path, data: np.ndarray, crs, transform, driver: str = "GTiff") -> None:
    """A raster with no nodata value of its own: the item's raster:bands nodata has to say it."""
    extra = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(path, "w", driver=driver, width=data.shape[-1], height=data.shape[-2],
                       count=1 if data.ndim == 2 else data.shape[0], dtype=data.dtype.name, crs=crs,
                       transform=transform, **extra) as ds:
        ds.write(data[np.newaxis] if data.ndim == 2 else data)


def _band_asset(href: str, title: str, name: str, common: str, centre: float, fwhm: float, res: int,
                media: str = COG) -> dict:
    """An Earth Search v1 sentinel-2-l2a band asset."""
    return {"href": href, "type": media, "title": title,
            "eo:bands": [{"name": name, "common_name": common, "description": title, "center_wavelength": centre,
                          "full_width_half_max": fwhm}],
            "gsd": res, "proj:shape": [64 * 10 // res, 128 * 10 // res],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": res,
                              "scale": SCALE, "offset": OFFSET}],
            "roles": ["data", "reflectance"]}


def earth_search_item(origin: tuple[float, float]) -> dict:
    assets = {
        "aot": {"href": "./AOT.tif", "type": COG, "title": "Aerosol optical thickness (AOT)",
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 20, "scale": 0.001,
                                  "offset": 0}], "roles": ["data", "reflectance"]},
        **{key: _band_asset(f"./{token}.tif", f"{key.title()} ({token}) - 10m", key, key, centre, fwhm, 10)
           for key, (token, _, centre, fwhm) in TEN_M.items()},
        "granule_metadata": {"href": "./granule_metadata.xml", "type": "application/xml", "roles": ["metadata"]},
        "rededge1": _band_asset("./B05.tif", "Red Edge 1 (band 5) - 20m", "rededge1", "rededge", 0.704, 0.019, 20),
        "scl": {"href": "./SCL.tif", "type": COG, "title": "Scene classification map (SCL)",
                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}], "roles": ["data"]},
        "thumbnail": {"href": "./thumbnail.jpg", "type": "image/jpeg", "title": "Thumbnail image",
                      "roles": ["thumbnail"]},
        "visual": {"href": "./TCI.tif", "type": COG, "title": "True color image",
                   "eo:bands": [{"name": n, "common_name": n, "center_wavelength": c, "full_width_half_max": f}
                                for n, (_, _, c, f) in TEN_M.items() if n != "nir"][::-1],
                   "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10}] * 3,
                   "roles": ["visual"]},
        "blue-jp2": _band_asset("./B02.jp2", "Blue (band 2) - 10m", "blue", "blue", 0.49, 0.098, 10, "image/jp2"),
    }
    x0, y0 = origin
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": [EO_V1, RASTER_V1, "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": ITEM_ID,
        "properties": {"created": "2022-07-28T00:51:03.141Z", "platform": "sentinel-2a", "constellation": "sentinel-2",
                       "instruments": ["msi"], "eo:cloud_cover": 0.8, "proj:epsg": 32633, "grid:code": "MGRS-33UUU",
                       "s2:product_type": "S2MSI2A", "s2:processing_baseline": "04.00",
                       "s2:product_uri": "S2A_MSIL2A_20220727T101031_N0400_R022_T33UUU_20220727T164410.SAFE",
                       "datetime": START, "earthsearch:boa_offset_applied": False,
                       "processing:software": {"sentinel2-to-stac": "0.1.0"}, "updated": "2022-07-28T00:51:03.141Z"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.0]]]},
        "links": [{"rel": "self", "type": "application/geo+json",
                   "href": f"https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/{ITEM_ID}"}],
        "assets": assets, "bbox": [x0, y0 - 640, x0 + 1280, y0], "collection": "sentinel-2-l2a",
    }


@pytest.fixture(scope="module")
def s2_item(tmp_path_factory):
    """A Wald case on Sentinel-2's 10 m grid (HSI 40 m): B2 B3 B4 B8 at 10 m and B5 at 20 m as Earth Search DN."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", ["B2", "B3", "B4", "B8"], wavelengths, fwhm_nm=fwhm)
    # A mild blur (sigma 1.2 HR pixels, as in the SAFE reader's tests): the band-agreement gain is a regression
    # slope, which the reference blur of the HSI alone pulls well below 1 whatever the scaling.
    case = evaluate.make_wald_case(cube, R, ratio=4, psf=evaluate.gaussian_psf(1.2, 3), seed=3)
    origin = (transform.c, transform.f)
    folder = tmp_path_factory.mktemp("stac_s2")
    at = {res: Affine(res, 0, origin[0], 0, -res, origin[1]) for res in (10, 20, 40)}
    for k, (token, _, _, _) in enumerate(TEN_M.values()):
        dn = _dn(case.hr_msi[k], SCALE, OFFSET)
        dn[CORNER] = 0
        _write(folder / f"{token}.tif", dn, crs, at[10])
    _write(folder / "B02.jp2", _dn(case.hr_msi[0], SCALE, OFFSET), crs, at[10], "JP2OpenJPEG")
    b5 = np.tensordot(srf.response_matrix("sentinel2a", ["B5"], wavelengths, fwhm_nm=fwhm), case.gt, axes=1)[0]
    b5 = b5.reshape(32, 2, 64, 2).mean(axis=(1, 3))
    _write(folder / "B05.tif", _dn(b5, SCALE, OFFSET), crs, at[20])
    scl = np.full((32, 64), 4, np.uint8)  # vegetation
    for where, value in SCL_CLASSES:
        scl[where] = value
    _write(folder / "SCL.tif", scl, crs, at[20])
    _write(folder / "AOT.tif", np.full((32, 64), 120, np.uint16), crs, at[20])
    _write(folder / "TCI.tif", np.full((3, 64, 128), 90, np.uint8), crs, at[10])
    item = folder / f"{ITEM_ID}.json"
    item.write_text(json.dumps(earth_search_item(origin), indent=2))
    hsi = write_tif(folder / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs, transform=at[40],
                    wavelengths=wavelengths, fwhm=fwhm)
    return dict(item=item, folder=folder, hsi=hsi, hr_msi=case.hr_msi, b5=b5, crs=crs)


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of the item next to it (its relative hrefs still point at the same files), changed by ``change``."""
    item = json.loads(source.read_text())
    change(item)
    target = source.parent / target.name
    target.write_text(json.dumps(item))
    return target


def test_an_earth_search_sentinel2_item_opens_in_reflectance_with_its_clouds(s2_item):
    with geolift_log() as records:
        scene = open_scene(s2_item["item"])
    assert scene.band_names == ("B2", "B3", "B4", "B5", "B8") and all(scene.named_bands)
    assert scene.descriptions == scene.band_names
    tags = scene.tags
    assert (tags["srf_sensor"], tags["sensor_family"], tags["sensor"]) == ("sentinel2a", "sentinel2", "Sentinel-2A")
    assert (tags["product_name"], tags["processing_level"], tags["acquisition_time"]) == (ITEM_ID, "L2A", START)
    np.testing.assert_allclose(scene.scales, SCALE)
    np.testing.assert_allclose(scene.offsets, OFFSET)  # reflectance = DN x 0.0001 - 0.1
    assert scene.nodata == (0.0,) * 5  # the files have none: raster:bands says 0
    assert scene.res == (10.0, 10.0) and scene.crs == s2_item["crs"] and (scene.height, scene.width) == (64, 128)
    # the COG, not its JP2 twin; not the 3-band visual composite nor the AOT layer
    assert sorted(Path(p).name for p in scene.paths) == ["B02.tif", "B03.tif", "B04.tif", "B05.tif", "B08.tif"]
    messages = " ".join(r.getMessage() for r in records)
    assert "B2 from asset blue (band name blue)" in messages
    assert "B5 from asset rededge1 (band name rededge1)" in messages
    assert "blue-jp2 (B2 again: blue is a Cloud-Optimized GeoTIFF)" in messages and "visual (roles visual)" in messages
    masked = json.loads(tags["masked_pixels"])
    assert masked == {"no data": 0, "saturated or defective": 0, "cloud shadow": 4, "cloud": 20, "thin cirrus": 4,
                      "snow": 0}
    data = scene.read()
    assert np.isnan(data[:, 8:12, 20:24]).all() and np.isnan(data[:, 12:14, 28:30]).all()  # class 9 and 8
    assert np.isnan(data[:, 16:18, 6:8]).all() and np.isnan(data[:, 28:30, 60:62]).all()  # shadow, thin cirrus
    assert np.isfinite(data[:, 24:26, 40:42]).all()  # water is not a mask
    assert np.isnan(data[[0, 1, 2, 4]][(slice(None), *CORNER)]).all()  # DN 0: the item's nodata
    ten = [0, 1, 2, 4]
    clear = np.isfinite(data[ten]).all(axis=0)
    assert clear.sum() == 64 * 128 - 4 - 20 - 4 - 4
    np.testing.assert_allclose(data[ten][:, clear], s2_item["hr_msi"][:, clear], atol=6e-5)
    # B5 is warped from 20 m onto the 10 m grid (bilinear): inside, each 10 m pixel is 3/4 of its own 20 m pixel
    # and 1/4 of the next one along each axis.
    coarse = _dn(s2_item["b5"], SCALE, OFFSET) * SCALE + OFFSET
    padded = np.pad(coarse, 1, mode="edge")
    expected = np.empty((64, 128))
    for dr in (0, 1):
        for dc in (0, 1):
            near_r, near_c = (-1 if dr == 0 else 1), (-1 if dc == 0 else 1)
            own = padded[1:-1, 1:-1]
            row = padded[1 + near_r:33 + near_r, 1:-1]
            col = padded[1:-1, 1 + near_c:65 + near_c]
            diag = padded[1 + near_r:33 + near_r, 1 + near_c:65 + near_c]
            expected[dr::2, dc::2] = 0.5625 * own + 0.1875 * (row + col) + 0.0625 * diag
    inside = clear.copy()
    inside[[0, -1], :] = inside[:, [0, -1]] = False
    np.testing.assert_allclose(data[3][inside], expected[inside], atol=1e-5)


def test_find_recognises_stac_items_and_nothing_else(s2_item, tmp_path):
    assert stac.find(s2_item["item"]) == stac.Found(str(s2_item["item"].resolve()))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))  # GeoJSON, not STAC
    assert stac.find(plain) is None and stac.find(s2_item["folder"] / "B02.tif") is None
    assert stac.find(tmp_path / "missing.json") is None and stac.find(s2_item["folder"]) is None
    api = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2A_33UUU_20220727_0_L2A"
    assert stac.find(api) == stac.Found(api) and stac.find(f"/vsicurl/{api}") == stac.Found(api)
    assert stac.find("https://example.com/x/item.json?sig=1") == stac.Found("https://example.com/x/item.json?sig=1")
    assert stac.find("https://example.com/x/B04.tif") is None


def _landsat_item(folder: Path, hrefs: dict[str, str]) -> dict:
    """A Planetary Computer landsat-c2-l2 item (OLI bands named OLI_B*, QA_PIXEL bit fields, thermal lwir11)."""
    def band(key, name, common, centre, fwhm, title):
        return {"href": hrefs[key], "type": COG, "title": title,
                "description": f"Collection 2 Level-2 {title} ({name.replace('OLI', 'SR')}) Surface Reflectance",
                "eo:bands": [{"name": name, "common_name": common, "description": title,
                              "center_wavelength": centre, "full_width_half_max": fwhm}],
                "raster:bands": [{"scale": 2.75e-05, "nodata": 0, "offset": -0.2, "data_type": "uint16",
                                  "spatial_resolution": 30}],
                "roles": ["data", "reflectance"]}

    bitfields = [{"name": n, "length": 1, "offset": k} for k, n in
                 enumerate(["fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow", "clear", "water"])]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": "LC09_L2SP_193023_20220727_02_T1",
        "stac_extensions": [EO_V1, RASTER_V1, "https://stac-extensions.github.io/classification/v1.0.0/schema.json"],
        "properties": {"gsd": 30, "datetime": "2022-07-27T09:58:12.123456Z", "platform": "landsat-9",
                       "instruments": ["oli", "tirs"], "eo:cloud_cover": 3.2, "landsat:correction": "L2SP",
                       "landsat:collection_number": "02", "landsat:collection_category": "T1"},
        "geometry": None, "links": [],
        "assets": {
            "red": band("red", "OLI_B4", "red", 0.65, 0.04, "Red Band"),
            "blue": band("blue", "OLI_B2", "blue", 0.48, 0.06, "Blue Band"),
            "green": band("green", "OLI_B3", "green", 0.56, 0.06, "Green Band"),
            "nir08": band("nir08", "OLI_B5", "nir08", 0.87, 0.03, "Near Infrared Band 0.8"),
            "lwir11": {"href": hrefs["lwir11"], "type": COG, "title": "Surface Temperature Band",
                       "eo:bands": [{"name": "TIRS_B10", "common_name": "lwir11", "center_wavelength": 10.9,
                                     "full_width_half_max": 0.8}],
                       "raster:bands": [{"unit": "kelvin", "scale": 0.00341802, "nodata": 0, "offset": 149.0,
                                         "data_type": "uint16", "spatial_resolution": 30}],
                       "roles": ["data", "temperature"]},
            "qa_pixel": {"href": hrefs["qa_pixel"], "type": COG, "title": "Pixel Quality Assessment Band",
                         "classification:bitfields": bitfields,
                         "raster:bands": [{"unit": "bit index", "nodata": 1, "data_type": "uint16",
                                           "spatial_resolution": 30}],
                         "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"]},
            "rendered_preview": {"href": "https://planetarycomputer.microsoft.com/api/data/v1/item/preview.png",
                                 "type": "image/png", "title": "Rendered preview", "roles": ["overview"]},
        },
        "collection": "landsat-c2-l2",
    }


def test_a_planetary_computer_landsat_item_reads_its_qa_pixel_bits(tmp_path):
    crs, transform = "EPSG:32633", Affine(30, 0, 365055, 0, -30, 5807085)
    rng = np.random.default_rng(7)
    reflectance = rng.uniform(0.02, 0.5, (4, 20, 30))
    hrefs = {}
    for k, key in enumerate(["blue", "green", "red", "nir08"]):
        dn = _dn(reflectance[k], 2.75e-5, -0.2)
        dn[0, 0] = 0  # fill
        _write(tmp_path / f"SR_B{k + 2}.TIF", dn, crs, transform)
        hrefs[key] = (tmp_path / f"SR_B{k + 2}.TIF").as_uri()  # absolute file:// hrefs this time
    _write(tmp_path / "ST_B10.TIF", np.full((20, 30), 44000, np.uint16), crs, transform)
    hrefs["lwir11"] = str(tmp_path / "ST_B10.TIF")
    clear = (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # 21824: clear, every confidence low
    qa = np.full((20, 30), clear, np.uint16)
    qa[0, 0] = 1  # fill
    qa[2, 2] = clear | (1 << 1)  # dilated cloud only
    qa[5:7, 5:8] = (1 << 1) | (1 << 3) | (3 << 8)  # cloud (high confidence), dilated too
    qa[10, 10] = clear | (1 << 4)  # cloud shadow
    qa[12, 3] = (1 << 5) | (3 << 12)  # snow
    qa[15, 20] = clear | (1 << 2)  # cirrus
    qa[18, 25] = clear | (1 << 7)  # water: not a mask
    _write(tmp_path / "QA_PIXEL.TIF", qa, crs, transform)
    hrefs["qa_pixel"] = str(tmp_path / "QA_PIXEL.TIF")
    item = tmp_path / "LC09_L2SP_193023_20220727_02_T1.json"
    item.write_text(json.dumps(_landsat_item(tmp_path, hrefs)))
    with geolift_log() as records:
        scene = open_scene(item)
    assert scene.band_names == ("B2", "B3", "B4", "B5")  # nir08 is Landsat 9's B5; the thermal band is no OLI band
    assert (scene.tags["srf_sensor"], scene.tags["sensor_family"]) == ("landsat9", "landsat")
    assert (scene.tags["sensor"], scene.tags["processing_level"]) == ("Landsat-9", "L2SP")
    messages = " ".join(r.getMessage() for r in records)
    assert "B5 from asset nir08 (common name nir08)" in messages
    assert "lwir11 (no Landsat-9 OLI-2 band matches TIRS_B10, lwir11, 10.9 µm)" in messages
    assert "rendered_preview" not in messages  # not a band asset at all
    np.testing.assert_allclose(scene.scales, 2.75e-5)
    np.testing.assert_allclose(scene.offsets, -0.2)
    masked = json.loads(scene.tags["masked_pixels"])
    assert masked == {"fill": 1, "dilated cloud": 7, "cirrus": 1, "cloud": 6, "cloud shadow": 1, "snow": 1}
    data = scene.read()
    flagged = np.zeros((20, 30), bool)
    for where in ((0, 0), (2, 2), (slice(5, 7), slice(5, 8)), (10, 10), (12, 3), (15, 20)):
        flagged[where] = True
    assert np.isnan(data[:, flagged]).all() and np.isfinite(data[:, ~flagged]).all()
    np.testing.assert_allclose(data[:, ~flagged], reflectance[:, ~flagged], atol=2e-5)  # blue … nir08 = B2 … B5


def test_a_planetary_computer_style_sentinel2_item_gets_esas_scaling_and_the_earth_search_flag_is_honoured(s2_item):
    """No raster:bands scale: ESA's rule by baseline; earthsearch:boa_offset_applied: the offset is in the DN."""
    def planetary(item, baseline="04.00"):
        item["properties"].update({"platform": "Sentinel-2A", "s2:processing_baseline": baseline})
        del item["properties"]["earthsearch:boa_offset_applied"]
        renamed = {}
        for key, asset in item["assets"].items():
            asset.pop("raster:bands", None)
            if asset.get("eo:bands") and len(asset["eo:bands"]) == 1:
                token = Path(asset["href"]).stem
                asset["eo:bands"][0]["name"] = token  # B02, ...
                key = token if not asset["href"].endswith(".jp2") else f"{token}-jp2"
            renamed[key.upper() if key == "scl" else key] = asset
        renamed["visual"]["roles"] = ["data"]  # as Planetary Computer has it: left out for its three bands
        item["assets"] = renamed

    new = open_scene(_rewrite(s2_item["item"], Path("pc_new.json"), planetary))
    assert new.band_names == ("B2", "B3", "B4", "B5", "B8") and json.loads(new.tags["masked_pixels"])["cloud"] == 20
    np.testing.assert_allclose(new.scales, 1e-4)
    np.testing.assert_allclose(new.offsets, -0.1)
    old = open_scene(_rewrite(s2_item["item"], Path("pc_old.json"), functools.partial(planetary, baseline="03.01")))
    np.testing.assert_allclose(old.offsets, 0.0)

    def harmonised(item):
        item["properties"]["earthsearch:boa_offset_applied"] = True

    with geolift_log() as records:
        flagged = open_scene(_rewrite(s2_item["item"], Path("harmonised.json"), harmonised))
    np.testing.assert_allclose(flagged.scales, 1e-4)
    np.testing.assert_allclose(flagged.offsets, 0.0)
    assert any("earthsearch:boa_offset_applied" in r.getMessage() for r in records)


def test_a_broken_or_unusable_item_is_one_clear_error(s2_item, tmp_path):
    source = s2_item["item"]
    truncated = source.parent / "truncated.json"
    truncated.write_text(source.read_text()[:600])
    cases = [
        (truncated, MetadataError, "not valid JSON .* truncated"),
        (_rewrite(source, Path("no_bands.json"), lambda i: i.update(assets={k: v for k, v in i["assets"].items()
                                                                            if k in ("scl", "visual", "thumbnail")})),
         MetadataError, r"no asset geolift can read as a Sentinel-2A MSI band \(visual \(roles visual\)\)"),
        (_rewrite(source, Path("landsat5.json"), lambda i: i["properties"].update(platform="landsat-5")),
         SensorError, r"platform 'landsat-5' \(Landsat-5\) has no spectral responses .*landsat8"),
        (_rewrite(source, Path("spot.json"), lambda i: i["properties"].update(platform="spot-7")),
         SensorError, "platform 'spot-7' is not a Sentinel-2 or Landsat spacecraft"),
        (_rewrite(source, Path("no_platform.json"), lambda i: i["properties"].pop("platform")),
         MetadataError, "no properties.platform"),
        (_rewrite(source, Path("no_properties.json"), lambda i: i.pop("properties")),
         MetadataError, "no properties object"),
        (_rewrite(source, Path("bad_scale.json"), lambda i: i["assets"]["red"]["raster:bands"][0].update(scale="x")),
         MetadataError, "asset red: scale 'x' is not a number"),
    ]
    two = source.parent / "search.json"
    item = json.loads(source.read_text())
    two.write_text(json.dumps({"type": "FeatureCollection", "features": [item, item | {"id": "other"}]}))
    cases.append((two, InputError, f"holds 2 STAC items \\({ITEM_ID}, other\\); give one item"))
    for path, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            open_scene(path)
        assert "\n" not in str(raised.value), path.name
    one = source.parent / "one.json"
    one.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    assert open_scene(one).tags["product_name"] == ITEM_ID  # a saved search holding one item is that item


def test_fuse_takes_the_sensor_bands_scaling_and_clouds_from_the_item(s2_item, tmp_path):
    result, out, report = run_fuse([s2_item["hsi"], s2_item["item"]], tmp_path, "item")
    assert result.exit_code == 0, result.output
    assert report["msi_product"] == {"product_name": ITEM_ID, "sensor": "Sentinel-2A", "processing_level": "L2A",
                                     "acquisition_time": START}
    assert report["msi_bands"] == ["B2", "B3", "B4", "B5", "B8"] and report["srf"] == "Sentinel-2A MSI"
    assert report["msi_masked_pixels"]["cloud"] == 20 and report["msi_masked_pixels"]["cloud shadow"] == 4
    gains = [row["gain"] for row in report["band_agreement"]]
    assert len(gains) == 5 and all(0.8 < gain < 1.25 for gain in gains), gains
    with rasterio.open(out) as ds:
        fused = ds.read()
        assert ds.tags()["msi_product_name"] == ITEM_ID
    assert np.isnan(fused[:, 8:12, 20:24]).all() and np.isnan(fused[:, 16:18, 6:8]).all()
    assert np.isfinite(fused[:, 24:26, 40:42]).all()
    # The same DN with the offset left out (the item flagged as harmonised): every MSI value 0.1 too high, which the
    # agreement fit (HSI ~ gain x MSI + offset) has to take back off, band by band.
    harmonised = _rewrite(s2_item["item"], Path("harmonised_fuse.json"),
                          lambda i: i["properties"].update({"earthsearch:boa_offset_applied": True}))
    result, _, shifted = run_fuse([s2_item["hsi"], harmonised], tmp_path, "shifted")
    assert result.exit_code == 0, result.output
    drops = [a["offset"] - b["offset"] for a, b in zip(report["band_agreement"], shifted["band_agreement"])]
    assert all(0.08 < drop < 0.11 for drop in drops), drops
    refused, _, _ = run_fuse([s2_item["hsi"], s2_item["item"], "--sensor", "sentinel2b"], tmp_path, "other")
    assert refused.exit_code == 2
    assert "--sensor sentinel2b does not match" in refused.output and "sentinel2a" in refused.output


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that answers byte ranges, as GDAL's /vsicurl/ asks for them."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        wanted = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not wanted or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start:end + 1])


def test_an_item_served_over_http_reads_its_relative_assets_over_http(s2_item, monkeypatch):
    """An http:// item URL (a server on this machine): the item is fetched, its relative hrefs become URLs that GDAL
    reads with /vsicurl/, and the scene equals the local one."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    handler = functools.partial(_RangeHandler, directory=str(s2_item["folder"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        remote = open_scene(f"{base}/{ITEM_ID}.json")
        assert all(p.startswith(f"/vsicurl/{base}/B0") for p in remote.paths)
        assert remote.masks[0].path == f"/vsicurl/{base}/SCL.tif"
        local = open_scene(s2_item["item"])
        assert remote.tags["masked_pixels"] == local.tags["masked_pixels"]
        np.testing.assert_array_equal(remote.read(), local.read())
        with pytest.raises(InputError, match="Cannot fetch the STAC item .*404"):
            open_scene(f"{base}/missing.json")
    finally:
        server.shutdown()
        server.server_close()
