"""What reading a product as delivered costs, against the same pixels as a tiled GeoTIFF (one run, one machine).

PRISMA's cubes are stored band-interleaved by line in HDF5 and read through GDAL with a transposing pixel source;
EMIT's are in swath geometry, read with h5py and placed on the map grid through the GLT, window by window. Both are
compared with reading the same values from a tiled, deflate-compressed GeoTIFF (band-sequential), the form a
converted product would have: open, a full read in 512 x 512 windows (as geolift's pipeline reads), and one
64 x 64 window of 20 bands.

    python benchmarks/product_reading.py [--size 600] [--repeat 3]

Needs h5py and h5netcdf (the test extra). Prints seconds (median of the repeats) and the ratio product / GeoTIFF.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from geolift.io import open_scene

CRS = "EPSG:32633"


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _geotiff(path: Path, cube: np.ndarray, transform: Affine, nodata) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=cube.shape[2], height=cube.shape[1], count=cube.shape[0],
                       dtype=cube.dtype.name, crs=CRS, transform=transform, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", nodata=nodata) as ds:
        ds.write(cube)
        for b in range(1, cube.shape[0] + 1):
            ds.update_tags(b, wavelength=str(400.0 + 8.0 * b), wavelength_units="nm")
    return path


def _prisma(folder: Path, size: int) -> tuple[Path, Path]:
    import h5py

    rng = np.random.default_rng(0)
    vnir, swir = 66, 173
    transform = Affine(30.0, 0.0, 300000.0, 0.0, -30.0, 5000000.0)
    path = folder / "PRS_L2D_STD_20220724101543_20220724101547_0001.he5"
    cubes = {}
    with h5py.File(path, "w") as f:
        for det, n, first in (("Vnir", vnir, 400.0), ("Swir", swir, 920.0)):
            dn = rng.integers(1, 65535, size=(size, n, size), dtype=np.uint16)  # (rows, bands, cols)
            f.create_dataset(f"HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/{det.upper()}_Cube", data=dn,
                             chunks=(64, n, 64))
            f.attrs[f"List_Cw_{det}"] = (first + 9.0 * np.arange(n))[::-1].astype(np.float32)
            f.attrs[f"List_Fwhm_{det}"] = np.full(n, 10.0, np.float32)
            f.attrs[f"L2Scale{det}Min"], f.attrs[f"L2Scale{det}Max"] = np.float32(0.0), np.float32(1.0)
            cubes[det] = dn[:, ::-1, :].transpose(1, 0, 2)  # increasing wavelength, (bands, rows, cols)
        f.attrs["Epsg_Code"] = np.int32(32633)
        f.attrs["Product_ULcorner_easting"], f.attrs["Product_ULcorner_northing"] = 300015.0, 4999985.0
        f.attrs["Product_LRcorner_easting"] = 300015.0 + 30.0 * (size - 1)
        f.attrs["Product_LRcorner_northing"] = 4999985.0 - 30.0 * (size - 1)
        f.attrs["Product_StartTime"] = np.bytes_("2022-07-24T10:15:43")
    tif = _geotiff(folder / "prisma.tif", np.concatenate([cubes["Vnir"], cubes["Swir"]]), transform, 0)
    return path, tif


def _emit(folder: Path, size: int) -> tuple[Path, Path]:
    import h5netcdf

    rng = np.random.default_rng(1)
    bands = 285
    swath = rng.random((size, size, bands), dtype=np.float32)  # (downtrack, crosstrack, bands)
    # the map grid: the swath turned by a quarter (every map pixel takes one swath pixel)
    rows, cols = np.mgrid[0:size, 0:size]
    glt_y, glt_x = cols + 1, size - rows
    transform = Affine(60.0, 0.0, 300000.0, 0.0, -60.0, 5000000.0)
    path = folder / "EMIT_L2A_RFL_001_20230801T101502_2321307_004.nc"
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"downtrack": size, "crosstrack": size, "bands": bands}
        f.create_variable("reflectance", ("downtrack", "crosstrack", "bands"), np.float32, data=swath,
                          chunks=(64, 64, bands), fillvalue=np.float32(-9999.0))
        params = f.create_group("sensor_band_parameters")
        params.create_variable("wavelengths", ("bands",), np.float32, data=(380.0 + 7.5 * np.arange(bands)))
        params.create_variable("fwhm", ("bands",), np.float32, data=np.full(bands, 8.5, np.float32))
        location = f.create_group("location")
        location.dimensions = {"ortho_y": size, "ortho_x": size}
        location.create_variable("glt_x", ("ortho_y", "ortho_x"), np.int32, data=glt_x.astype(np.int32))
        location.create_variable("glt_y", ("ortho_y", "ortho_x"), np.int32, data=glt_y.astype(np.int32))
        f.attrs["geotransform"] = np.array(transform.to_gdal())
        f.attrs["spatial_ref"] = rasterio.crs.CRS.from_string(CRS).to_wkt()
        f.attrs["time_coverage_start"] = "2023-08-01T10:15:02+0000"
    ortho = swath[glt_y - 1, glt_x - 1].transpose(2, 0, 1)
    tif = _geotiff(folder / "emit.tif", np.ascontiguousarray(ortho), transform, -9999.0)
    return path, tif


def _measure(label: str, product: Path, tif: Path, repeat: int) -> None:
    scenes = {}

    def opener(kind, path):
        def run():
            scenes[kind] = open_scene(path)
        return run

    print(f"\n{label}")
    print(f"{'step':<34}{'product s':>11}{'GeoTIFF s':>11}{'ratio':>8}")
    rows = [("open (metadata, masks, checks)", opener("p", product), opener("t", tif))]
    for name, p_fn, t_fn in rows:
        a, b = _timed(p_fn, repeat), _timed(t_fn, repeat)
        print(f"{name:<34}{a:>11.3f}{b:>11.3f}{a / b:>8.2f}")
    p, t = scenes["p"], scenes["t"]
    expected = t.read(window=((0, 64), (0, 64)), bands=[0, 5, p.count - 1])  # the same values, or timings mean nothing
    if p.scales[0] != 1.0:
        expected = expected * np.float32(p.scales[0]) + np.float32(p.offsets[0])
    np.testing.assert_array_equal(p.read(window=((0, 64), (0, 64)), bands=[0, 5, p.count - 1]), expected)

    def full(scene):
        def run():
            for window in scene.block_windows(512):
                scene.read(window=window)
        return run

    def small(scene):
        def run():
            at = min(100, scene.height - 64, scene.width - 64)
            scene.read(window=((at, at + 64), (at, at + 64)), bands=list(range(0, 200, 10)))
        return run

    for name, fn in (("full read, 512 x 512 windows", full), ("one 64 x 64 window, 20 bands", small)):
        a, b = _timed(fn(p), repeat), _timed(fn(t), repeat)
        print(f"{name:<34}{a:>11.3f}{b:>11.3f}{a / b:>8.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=600, help="rows = columns of each cube (default 600)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"PRISMA-like L2D: {args.size} x {args.size} px, 66 + 173 bands, uint16; "
              f"EMIT-like L2A: {args.size} x {args.size} px, 285 bands, float32")
        _measure("PRISMA L2D (.he5, BIL, through the HDF5 driver) vs GeoTIFF", *_prisma(folder, args.size),
                 args.repeat)
        _measure("EMIT L2A (.nc swath read with h5py + GLT) vs GeoTIFF", *_emit(folder, args.size),
                 args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
