"""Batch throughput on a local Dask cluster: the same N jobs on 1 worker, then on 2 (or more).

Jobs are Wald-protocol cases cut from the real EnMAP Potsdam cube (sample_data/
enmap_l2a_potsdam_mosaic_128x64_224b.tif): 64 x 64 px windows at different columns, each degraded
to an LR-HSI (ratio 4, 16 x 16 px, 218 bands) and a Sentinel-2A B2/B3/B4/B8 HR-MSI, written as
GeoTIFFs. Every run fuses all N jobs with ``--force`` (so nothing is skipped) on a fresh
``LocalCluster`` of single-threaded worker processes; the clock covers ``run_batch`` only (the
cluster is started and each worker has imported geolift before it starts). The outputs of all runs
are compared array for array: the worker count must not change a result.

    python benchmarks/batch_scaling.py [--jobs 8] [--steps 1000] [--workers 1 2] [--repeat 3]

Prints throughput (jobs/min) per worker count and the speed-up over the first count. With
``--repeat R`` the worker counts are run R times, interleaved (1, 2, 1, 2, ...), and the median
wall time of each count is used, which tames the noise of a machine shared with other work; the
load average before and after is printed for the same reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(REPO))

from geolift import evaluate, srf  # noqa: E402
from geolift.batch import BatchSettings, read_manifest, run_batch, start_local_cluster  # noqa: E402

CUBE = REPO / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
BANDS = ("B2", "B3", "B4", "B8")
SIZE, RATIO = 64, 4


def read_cube():
    """Good bands by increasing wavelength (nodata -> NaN), band centres/FWHM in nm, CRS, transform."""
    with rasterio.open(CUBE) as ds:
        cube = ds.read().astype(np.float32)
        tags = [ds.tags(i + 1) for i in range(ds.count)]
        nodata, crs, transform = ds.nodata, ds.crs, ds.transform
    cube[cube == nodata] = np.nan
    good = np.array([t.get("bbl", "1") != "0" for t in tags])
    wavelengths = np.array([float(t["wavelength"]) for t in tags])
    fwhm = np.array([float(t["fwhm"]) for t in tags])
    order = np.flatnonzero(good)[np.argsort(wavelengths[good], kind="stable")]
    return cube[order], wavelengths[order], fwhm[order], crs, transform


def write_tif(path: Path, data: np.ndarray, crs, transform, wavelengths=None, fwhm=None, descriptions=None):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype="float32", crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(np.float32))
        for i in range(data.shape[0]):
            if wavelengths is not None:
                ds.update_tags(i + 1, wavelength=repr(float(wavelengths[i])), fwhm=repr(float(fwhm[i])),
                               wavelength_units="Nanometers")
            if descriptions is not None:
                ds.set_band_description(i + 1, descriptions[i])


def write_jobs(folder: Path, n_jobs: int, steps: int) -> Path:
    """N Wald cases (64 x 64 px windows of the cube, different columns and noise seeds) and their manifest."""
    cube, wavelengths, fwhm, crs, transform = read_cube()
    R = srf.response_matrix("sentinel2a", list(BANDS), wavelengths, fwhm_nm=fwhm)
    columns = np.linspace(0, cube.shape[2] - SIZE, n_jobs).round().astype(int)
    rows = ["hsi,msi,sensor,bands,steps,seed"]
    for i, col in enumerate(columns):
        case = evaluate.make_wald_case(cube[:, :SIZE, col:col + SIZE], R, ratio=RATIO, seed=100 + i)
        hr = transform @ Affine.translation(int(col), 0)
        write_tif(folder / f"job{i:02d}_hsi.tif", case.lr_hsi, crs, hr @ Affine.scale(RATIO), wavelengths, fwhm)
        write_tif(folder / f"job{i:02d}_msi.tif", case.hr_msi, crs, hr, descriptions=BANDS)
        rows.append(f"job{i:02d}_hsi.tif,job{i:02d}_msi.tif,sentinel2a,{' '.join(BANDS)},{steps},{i}")
    manifest = folder / "jobs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _warm_up() -> bool:
    import torch  # noqa: F401

    import geolift.batch  # noqa: F401

    return True


def run_once(manifest: Path, outdir: Path, n_workers: int) -> tuple[float, list]:
    from distributed import Client

    jobs = read_manifest(manifest, outdir)
    cluster = start_local_cluster(n_workers=n_workers, torch_threads=1)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(n_workers)
            client.run(_warm_up)
            started = time.perf_counter()
            report = run_batch(jobs, client, BatchSettings(force=True))
            seconds = time.perf_counter() - started
    finally:
        cluster.close()
    failed = [r for r in report.results if r.status != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed, e.g. {failed[0].job}: {failed[0].reason}")
    return seconds, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8, help="number of jobs (default 8)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per job (default 1000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count, interleaved (default 1)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="geolift-batch-bench-") as tmp:
        tmp = Path(tmp)
        manifest = write_jobs(tmp, args.jobs, args.steps)
        timings: dict[int, list[float]] = {n: [] for n in args.workers}
        outputs = {}
        for _ in range(max(1, args.repeat)):
            for n in args.workers:
                seconds, jobs = run_once(manifest, tmp / f"out_{n}", n)
                timings[n].append(seconds)
                outputs[n] = [rasterio.open(j.output).read() for j in jobs]
        first = args.workers[0]
        identical = all(np.array_equal(a, b, equal_nan=True)
                        for n in args.workers[1:] for a, b in zip(outputs[first], outputs[n]))
    load_after = os.getloadavg()
    median = {n: float(np.median(t)) for n, t in timings.items()}

    import torch

    print(f"geolift batch scaling: {args.jobs} Wald-case jobs (64 x 64 px output, 218 bands, "
          f"{args.steps} training steps each), LocalCluster, 1 thread per worker, 1 torch thread per task")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}; {dt.date.today().isoformat()}; "
          f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print("| workers | wall time (s), median | runs (s) | throughput (jobs/min) | speed-up |")
    print("| ---: | ---: | :--- | ---: | ---: |")
    for n in args.workers:
        runs = ", ".join(f"{t:.1f}" for t in timings[n])
        print(f"| {n} | {median[n]:.1f} | {runs} | {60.0 * args.jobs / median[n]:.1f} | "
              f"{median[first] / median[n]:.2f} |")
    print()
    print(f"outputs identical across worker counts: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
