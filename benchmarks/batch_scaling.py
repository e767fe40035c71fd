"""Batch throughput on a local cluster, 1 worker then 2, with the client's own CPU time.

Two job shapes, both cut from the real EnMAP Potsdam cube (sample_data/enmap_l2a_potsdam_mosaic_128x64_224b.tif,
218 good bands):

* ``--shape archive`` (default): jobs shaped like archive work, where the output pixels per unit of training
  are those of a full EnMAP scene fused at 10 m. The LR-HSI is the whole cube (128 x 64 px at 30 m); the HR-MSI
  is its Sentinel-2A B2/B3/B4/B8 projection upsampled (bilinear) by 12, so each output is 1536 x 768 x 218;
  300 training steps (``--steps``), the default preset.
* ``--shape small``: 64 x 64 px Wald cases (ratio 4) of about a second each, which measure per-task overhead.

The scheduler and the workers are separate processes (``dask scheduler`` and ``dask worker`` with nannies, one
thread each), as on a real cluster, so the benchmark's own process is exactly the batch client (``run_batch``):
its CPU time (``getrusage``) is the client's, and the workers' CPU time is read from their processes. Every run
fuses all jobs with ``force``; the clock covers ``run_batch`` only. Outputs of all runs are compared array for
array: the worker count must not change a result.

    python benchmarks/batch_scaling.py [--shape archive|small] [--jobs 4] [--steps 300] [--workers 1 2]
                                       [--repeat 1]

Prints wall time, throughput and speed-up per worker count, the CPU time of the client, the workers and the
scheduler, and the two targets of issue 17 (2 workers >= 1.7 x one worker; the client <= 5 % of all the batch's
CPU time, client plus workers) as met or NOT met. With ``--repeat R`` the counts are run R times, interleaved,
and medians are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
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
from geolift.batch import BatchSettings, read_manifest, run_batch  # noqa: E402

CUBE = REPO / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
BANDS = ("B2", "B3", "B4", "B8")
SIZE, RATIO = 64, 4
ARCHIVE_RATIO = 12


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
    dtype = "int16" if data.dtype == np.int16 else "float32"
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=dtype, crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))
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


def write_archive_jobs(folder: Path, n_jobs: int, steps: int) -> Path:
    """N archive-shaped jobs on one simulated pair (the jobs differ by seed), stored as int16 reflectance x 10000
    like EnMAP and Sentinel-2 L2A. The HR-HSI is the cube upsampled x12 (bilinear); the HR-MSI its Sentinel-2A
    projection; the LR-HSI is it blurred by a Gaussian PSF (sigma 0.5 x ratio) and decimated: the whole cube again,
    consistent with its MSI as a real pair is, so the default preset's consistency step runs as it would."""
    import torch

    cube, wavelengths, fwhm, crs, transform = read_cube()
    R = srf.response_matrix("sentinel2a", list(BANDS), wavelengths, fwhm_nm=fwhm)
    cube = torch.from_numpy(np.nan_to_num(cube, nan=0.0))
    hr = torch.nn.functional.interpolate(cube[None], scale_factor=ARCHIVE_RATIO, mode="bilinear",
                                         align_corners=False)[0]
    msi = torch.tensordot(torch.from_numpy(R.astype(np.float32)), hr, dims=1)
    sigma = 0.5 * ARCHIVE_RATIO
    taps = torch.arange(-3 * sigma, 3 * sigma + 1)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum())[None, None]
    pad = kernel.shape[-1] // 2
    rows = torch.nn.functional.conv1d(torch.nn.functional.pad(hr.permute(0, 2, 1).reshape(-1, 1, hr.shape[1]),
                                                              (pad, pad), mode="replicate"), kernel)
    blurred = rows.reshape(hr.shape[0], hr.shape[2], hr.shape[1]).permute(0, 2, 1).contiguous()
    cols = torch.nn.functional.conv1d(torch.nn.functional.pad(blurred.reshape(-1, 1, hr.shape[2]), (pad, pad),
                                                              mode="replicate"), kernel)
    blurred = cols.reshape(hr.shape)
    half = ARCHIVE_RATIO // 2  # an LR pixel's centre lies between HR pixels half - 1 and half: average them
    lr = sum(blurred[:, r::ARCHIVE_RATIO, c::ARCHIVE_RATIO] for r in (half - 1, half) for c in (half - 1, half)) / 4
    del hr, blurred, rows, cols
    write_tif(folder / "scene_hsi.tif", lr.round().numpy().astype(np.int16), crs, transform, wavelengths, fwhm)
    write_tif(folder / "scene_msi.tif", msi.round().numpy().astype(np.int16), crs,
              transform @ Affine.scale(1 / ARCHIVE_RATIO), descriptions=BANDS)
    rows = ["hsi,msi,sensor,bands,steps,seed,output"]
    rows += [f"scene_hsi.tif,scene_msi.tif,sentinel2a,{' '.join(BANDS)},{steps},{i},job{i:02d}_fused.tif"
             for i in range(n_jobs)]
    manifest = folder / "jobs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _warm_up() -> bool:
    import torch  # noqa: F401

    import geolift.batch  # noqa: F401

    return True


class Cluster:
    """A scheduler and ``n`` single-threaded workers (with nannies) in their own processes."""

    def __init__(self, n_workers: int, folder: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.file = folder / f"scheduler-{n_workers}-{time.monotonic_ns()}.json"
        common = ["--no-dashboard"]
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--scheduler-file", str(self.file), *common], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        while not self.file.exists():
            time.sleep(0.1)
        self.workers = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
             "--nworkers", str(n_workers), "--nthreads", "1", "--memory-limit", "0", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        for proc in (self.workers, self.scheduler):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cpu_seconds(pids) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(manifest: Path, outdir: Path, n_workers: int, folder: Path) -> dict:
    from distributed import Client

    jobs = read_manifest(manifest, outdir)
    cluster = Cluster(n_workers, folder)
    try:
        with Client(scheduler_file=str(cluster.file)) as client:
            client.wait_for_workers(n_workers, timeout=120)
            client.run(_warm_up)
            workers = list(client.run(os.getpid).values())
            scheduler = client.run_on_scheduler(os.getpid)
            before = _own_cpu(), _cpu_seconds(workers), _cpu_seconds([scheduler])
            started = time.perf_counter()
            report = run_batch(jobs, client, BatchSettings(force=True))
            seconds = time.perf_counter() - started
            after = _own_cpu(), _cpu_seconds(workers), _cpu_seconds([scheduler])
    finally:
        cluster.close()
    failed = [r for r in report.results if r.status != "done"]
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed, e.g. {failed[0].job}: {failed[0].reason}")
    client_cpu, worker_cpu, scheduler_cpu = (a - b for a, b in zip(after, before))
    return {"seconds": seconds, "jobs": jobs, "client": client_cpu, "workers": worker_cpu,
            "scheduler": scheduler_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["archive", "small"], default="archive", help="job shape (see above)")
    parser.add_argument("--jobs", type=int, default=None, help="number of jobs (default 4 archive, 8 small)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per job (default 300 archive, "
                        "1000 small)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count, interleaved (default 1)")
    args = parser.parse_args()
    archive = args.shape == "archive"
    n_jobs = args.jobs or (4 if archive else 8)
    steps = args.steps or (300 if archive else 1000)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="geolift-batch-bench-") as tmp:
        tmp = Path(tmp)
        manifest = (write_archive_jobs if archive else write_jobs)(tmp, n_jobs, steps)
        runs: dict[int, list[dict]] = {n: [] for n in args.workers}
        outputs = {}
        for _ in range(max(1, args.repeat)):
            for n in args.workers:
                run = run_once(manifest, tmp / f"out_{n}", n, tmp)
                runs[n].append(run)
                outputs[n] = [rasterio.open(j.output).read() for j in run["jobs"]]
                print(f"  {n} worker(s): {run['seconds']:.1f} s", flush=True)
        first = args.workers[0]
        identical = all(np.array_equal(a, b, equal_nan=True)
                        for n in args.workers[1:] for a, b in zip(outputs[first], outputs[n]))
        with rasterio.open(runs[first][0]["jobs"][0].output) as ds:
            size_mb = os.path.getsize(runs[first][0]["jobs"][0].output) / 1e6
            shape = f"{ds.width} x {ds.height} px x {ds.count} bands, {ds.dtypes[0]}, {size_mb:.0f} MB"
    load_after = os.getloadavg()

    def median(n: int, key: str) -> float:
        return float(np.median([r[key] for r in runs[n]]))

    import torch

    what = (f"{n_jobs} archive-shaped jobs (LR-HSI 128 x 64 px, ratio {ARCHIVE_RATIO}" if archive
            else f"{n_jobs} Wald-case jobs (ratio {RATIO}")
    print(f"geolift batch scaling: {what}; output {shape}; {steps} training steps each, default preset), "
          "scheduler and workers in their own processes, 1 thread per worker, 1 torch thread per task")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, torch {torch.__version__}; {dt.date.today().isoformat()}; "
          f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print("| workers | wall time (s), median | runs (s) | throughput (jobs/min) | speed-up | client CPU (s) | "
          "workers' CPU (s) | scheduler CPU (s) | client share |")
    print("| ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
    shares = {}
    for n in args.workers:
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs[n])
        client, workers = median(n, "client"), median(n, "workers")
        shares[n] = client / (client + workers)
        print(f"| {n} | {median(n, 'seconds'):.1f} | {seconds} | {60.0 * n_jobs / median(n, 'seconds'):.2f} | "
              f"{median(first, 'seconds') / median(n, 'seconds'):.2f} | {client:.1f} | {workers:.1f} | "
              f"{median(n, 'scheduler'):.1f} | {100 * shares[n]:.1f} % |")
    print()
    per_job = median(first, "workers") / n_jobs
    print(f"per job: {per_job:.1f} s of worker CPU, {median(first, 'client') / n_jobs:.3f} s of client CPU, "
          f"{median(first, 'scheduler') / n_jobs:.2f} s of scheduler CPU ({first} worker(s))")
    print(f"outputs identical across worker counts: {'yes' if identical else 'NO'}")
    if 1 in args.workers and 2 in args.workers:
        speedup = median(1, "seconds") / median(2, "seconds")
        print(f"target: 2 workers >= 1.7 x one worker: {speedup:.2f} x: {'met' if speedup >= 1.7 else 'NOT met'}")
    worst = max(shares.values())
    print(f"target: client CPU <= 5 % of the batch's (client + workers): at most {100 * worst:.1f} %: "
          f"{'met' if worst <= 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
