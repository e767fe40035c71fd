"""Does ``geolift fuse`` stay within bounded memory however large the scene? Wall time, throughput, peak RSS.

The benchmark writes one synthetic LR-HSI (100 x 100 px at 100 m, 200 bands, int16 reflectance x 10000) and two
HR-MSIs of the *same* 10 km x 10 km area (Sentinel-2A B2, B3, B4, B8): 1000 x 1000 px at 10 m and 4000 x 4000 px at
2.5 m, i.e. resolution ratios 10 and 40. Then it runs ``geolift fuse`` on each pair in a child process, with the
same seed and number of training steps.

Why the same LR-HSI for both: SpectraLift trains on the LR-HSI alone (the MSI response applied to it -> the LR-HSI),
so the training set, and with it the training time and the memory it needs, is identical in both runs. Only the
streamed part grows: reading the HR-MSI window by window, predicting, and writing the 200-band output tile by tile
(16 x more pixels at 4000 x 4000). If the pipeline streams as it should, the peak memory of the two runs is about the
same; the target is peak(4000) <= 1.2 x peak(1000).

The scene is realistic in the sense that matters here (spectra and spatial statistics, not a constant image):
6 endmember spectra are taken from the real EnMAP Potsdam cube in sample_data/ (the pixels farthest apart in
spectral space, interpolated onto 200 bands from 420 to 2440 nm) and mixed pixel by pixel with abundances
softmax(2.5 * f_k(x, y)), where each f_k is a sum of 24 plane waves with random directions, log-uniform spatial
periods from 20 m to 3 km and amplitudes falling as 1/frequency (the 1/f spectrum of natural images). The scene is a
function of ground coordinates, so each file samples the same landscape at its own resolution, block by block: the
generator never holds more than one 512 x 512 block of the HR-MSI (the HSI pixels are averages of 8 x 8 samples of
the scene, computed one HSI row at a time). A little noise (40 dB) is added to both images.

Peak RSS is the child process's own (``os.wait4`` returns the resource usage of that one child), so the
generator's memory and the other run are not counted. Training and writing times come from the ``--report`` JSON
the command writes; pixels per second are output (HR-MSI) pixels over the wall time of the command.

    python benchmarks/fuse_scale.py [--sizes 1000 4000] [--steps 500] [--torch-threads 1] [--keep DIR]

Each run writes a multi-GB GeoTIFF (4000 x 4000 x 200 int16 is 6.4 GB before compression) into a temporary folder
that is removed afterwards unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(REPO))

from geolift import srf  # noqa: E402

POTSDAM = REPO / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
CRS = "EPSG:32633"
ORIGIN = (380000.0, 5820000.0)  # upper-left corner (m), near Potsdam
EXTENT_M = 10000.0  # the scene is 10 km x 10 km
HSI_SIZE = 100  # LR-HSI pixels per side (100 m)
N_BANDS = 200
MSI_BANDS = ["B2", "B3", "B4", "B8"]
N_ENDMEMBERS = 6
N_WAVES = 24
BLOCK = 512
HSI_SUBSAMPLES = 8  # per side, per HSI pixel
SNR_DB = 40.0
NODATA = -32768
SEED = 7


# --------------------------------------------------------------------------------------------- the scene
def potsdam_endmembers(wavelengths: np.ndarray, k: int) -> np.ndarray:
    """``k`` real spectra (reflectance 0..1) of the Potsdam cube, far apart from each other, on ``wavelengths``."""
    with rasterio.open(POTSDAM) as ds:
        cube = ds.read().astype(np.float64)
        tags = [ds.tags(b + 1) for b in range(ds.count)]
        nodata = ds.nodata
    good = np.array([t.get("bbl", "1") != "0" for t in tags])
    wl = np.array([float(t["wavelength"]) for t in tags])
    order = np.flatnonzero(good)[np.argsort(wl[good])]
    pixels = cube[order].reshape(len(order), -1).T / 10000.0
    pixels = pixels[np.all(cube[order].reshape(len(order), -1).T != nodata, axis=1)]
    chosen = [int(np.argmax(pixels.mean(axis=1)))]  # brightest first, then farthest-point sampling
    for _ in range(k - 1):
        distance = np.min([np.linalg.norm(pixels - pixels[c], axis=1) for c in chosen], axis=0)
        chosen.append(int(np.argmax(distance)))
    return np.stack([np.interp(wavelengths, wl[order], pixels[c]) for c in chosen])  # (k, bands)


class Landscape:
    """Abundances of ``k`` endmembers as smooth random functions of ground coordinates (metres)."""

    def __init__(self, k: int, waves: int, seed: int):
        rng = np.random.default_rng(seed)
        period = np.exp(rng.uniform(np.log(20.0), np.log(3000.0), (k, waves)))
        angle = rng.uniform(0, 2 * np.pi, (k, waves))
        self.u = np.cos(angle) / period  # cycles per metre along x
        self.v = np.sin(angle) / period  # along y
        self.phase = rng.uniform(0, 2 * np.pi, (k, waves))
        amplitude = period / period.max()  # 1/f
        self.amplitude = amplitude / np.sqrt((amplitude ** 2).sum(axis=1, keepdims=True) / 2)  # unit std per field
        self.sharpness = 2.5

    def abundances(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(k, len(y), len(x))`` abundances (summing to 1) on the grid of points ``x`` (columns) by ``y`` (rows).

        sin(a + b) = sin a cos b + cos a sin b turns each field into two small matrix products.
        """
        k = self.u.shape[0]
        fields = np.empty((k, y.size, x.size))
        for i in range(k):
            ax = 2 * np.pi * np.outer(self.u[i], x) + self.phase[i][:, None]  # (waves, cols)
            by = 2 * np.pi * np.outer(y, self.v[i])  # (rows, waves)
            a = self.amplitude[i]
            fields[i] = (np.cos(by) * a) @ np.sin(ax) + (np.sin(by) * a) @ np.cos(ax)
        fields *= self.sharpness
        fields -= fields.max(axis=0, keepdims=True)
        np.exp(fields, out=fields)
        fields /= fields.sum(axis=0, keepdims=True)
        return fields


def add_noise(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``SNR_DB`` relative to the values' mean power."""
    sigma = np.sqrt(np.mean(values ** 2) / 10 ** (SNR_DB / 10))
    return values + rng.normal(0.0, sigma, values.shape)


def to_int16(reflectance: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(reflectance * 10000), -32767, 32767).astype(np.int16)


def write_hsi(path: Path, landscape: Landscape, endmembers: np.ndarray, wavelengths: np.ndarray,
              fwhm: np.ndarray, size: int = HSI_SIZE, subsamples: int = HSI_SUBSAMPLES) -> None:
    """The LR-HSI, ``size`` x ``size`` px over the 10 km: each pixel the mean spectrum of ``subsamples`` x
    ``subsamples`` samples of the landscape inside it."""
    pixel = EXTENT_M / size
    transform = Affine.translation(*ORIGIN) @ Affine.scale(pixel, -pixel)
    profile = dict(driver="GTiff", width=size, height=size, count=N_BANDS, dtype="int16", crs=CRS,
                   transform=transform, nodata=NODATA, tiled=True, blockxsize=128, blockysize=128,
                   compress="deflate", interleave="band")
    rng = np.random.default_rng(SEED + 1)
    offsets = (np.arange(subsamples) + 0.5) * pixel / subsamples
    x = (np.arange(size)[:, None] * pixel + offsets[None, :]).ravel()
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(size):
            y = -(row * pixel + offsets)  # metres below the top edge
            ab = landscape.abundances(x, y)  # (k, subsamples, size*subsamples)
            mean = ab.reshape(ab.shape[0], subsamples, size, subsamples).mean(axis=(1, 3))  # (k, size)
            spectra = add_noise(endmembers.T @ mean, rng)  # (bands, size)
            ds.write(to_int16(spectra)[:, None, :], window=Window(0, row, size, 1))
        for b in range(N_BANDS):
            ds.update_tags(b + 1, wavelength=f"{wavelengths[b]:.3f}", fwhm=f"{fwhm[b]:.3f}",
                           wavelength_units="Nanometers")
        ds.update_tags(scale_factor_reflectance="1e-4", source="geolift benchmarks/fuse_scale.py (synthetic)")


def write_msi(path: Path, size: int, landscape: Landscape, msi_endmembers: np.ndarray) -> None:
    """The HR-MSI, ``size`` x ``size`` px over the same 10 km, written 512 x 512 block by block."""
    pixel = EXTENT_M / size
    transform = Affine.translation(*ORIGIN) @ Affine.scale(pixel, -pixel)
    profile = dict(driver="GTiff", width=size, height=size, count=len(MSI_BANDS), dtype="int16", crs=CRS,
                   transform=transform, nodata=NODATA, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   compress="deflate", interleave="band")
    with rasterio.open(path, "w", **profile) as ds:
        for row0 in range(0, size, BLOCK):
            for col0 in range(0, size, BLOCK):
                rows, cols = min(BLOCK, size - row0), min(BLOCK, size - col0)
                x = (col0 + np.arange(cols) + 0.5) * pixel
                y = -(row0 + np.arange(rows) + 0.5) * pixel
                ab = landscape.abundances(x, y)
                msi = np.tensordot(msi_endmembers, ab, axes=1)  # (4, rows, cols)
                rng = np.random.default_rng([SEED, size, row0, col0])
                ds.write(to_int16(add_noise(msi, rng)), window=Window(col0, row0, cols, rows))
        for b, name in enumerate(MSI_BANDS):
            ds.set_band_description(b + 1, name)


def make_scene(folder: Path, sizes: list[int], hsi_size: int = HSI_SIZE,
               hsi_subsamples: int = HSI_SUBSAMPLES) -> tuple[Path, dict[int, Path], float]:
    """The LR-HSI (``hsi_size`` px per side) and one HR-MSI per size in ``sizes``, all over the same 10 km."""
    wavelengths = np.linspace(420.0, 2440.0, N_BANDS)
    fwhm = np.full(N_BANDS, 1.2 * (wavelengths[1] - wavelengths[0]))
    endmembers = potsdam_endmembers(wavelengths, N_ENDMEMBERS)
    R = srf.response_matrix("sentinel2a", MSI_BANDS, wavelengths, fwhm_nm=fwhm)
    landscape = Landscape(N_ENDMEMBERS, N_WAVES, SEED)
    started = time.perf_counter()
    hsi = folder / ("synthetic_hsi_100m_200b.tif" if hsi_size == HSI_SIZE else f"synthetic_hsi_{hsi_size}px_200b.tif")
    write_hsi(hsi, landscape, endmembers, wavelengths, fwhm, hsi_size, hsi_subsamples)
    msis = {}
    for size in sizes:
        msis[size] = folder / f"synthetic_s2_{size}px.tif"
        write_msi(msis[size], size, landscape, R @ endmembers.T)
    return hsi, msis, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- the runs
def run_fuse(hsi: Path, msi: Path, out: Path, steps: int, torch_threads: int, gdal_threads: int) -> dict:
    """``geolift fuse`` in a child process; wall time, that child's peak RSS, and its --report."""
    report = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "geolift", "fuse", str(hsi), str(msi), "--sensor", "sentinel2a",
           "--bands", ",".join(MSI_BANDS), "--steps", str(steps), "--seed", "0", "-o", str(out), "--overwrite",
           "--threads", str(gdal_threads), "--progress", "none", "--report", str(report)]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch_threads), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    log = child.stdout.read()
    child.stdout.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"geolift fuse failed ({child.returncode}):\n{log}")
    data = json.loads(report.read_text())
    width, height = data["output_size"]
    return dict(cmd=cmd, wall=wall, peak_mb=usage.ru_maxrss / 1024.0, train=data["train_seconds"],
                write=data["write_seconds"], pixels=width * height, size_gb=out.stat().st_size / 1e9,
                ratio=data["resolution_ratio"], srf_rel=data["srf_consistency_relative"],
                shift=data["shift_px"], log=log)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 ** 2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {cores} cores{memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000], help="HR-MSI sizes (px per side)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (the same for every run)")
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS for the child (torch)")
    parser.add_argument("--threads", type=int, default=2, help="GDAL compression threads (geolift --threads)")
    parser.add_argument("--keep", type=Path, help="write into this folder and keep the files")
    args = parser.parse_args(argv)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="geolift_fuse_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(f"# geolift fuse scaling benchmark, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
        print(f"# command: python {shlex.join(['benchmarks/fuse_scale.py', *(argv or sys.argv[1:])])}")
        print(f"# machine: {machine()}")
        hsi, msis, gen_seconds = make_scene(folder, args.sizes)
        print(f"# scene: LR-HSI {HSI_SIZE} x {HSI_SIZE} px x {N_BANDS} bands (100 m); HR-MSI "
              f"{', '.join(f'{s} x {s}' for s in args.sizes)} px x {len(MSI_BANDS)} bands over the same 10 km; "
              f"generated in {gen_seconds:.0f} s")
        print(f"# geolift fuse --steps {args.steps} --seed 0 (torch threads {args.torch_threads}, "
              f"GDAL threads {args.threads}), output int16, DEFLATE, 512 px tiles")
        print()
        header = (f"{'MSI size':>11} {'ratio':>6} {'wall s':>8} {'train s':>8} {'write s':>8} {'Mpx/s':>7} "
                  f"{'px/s write':>11} {'peak RSS MB':>12} {'output GB':>10} {'SRF err %':>9}")
        print(header)
        results = {}
        for size in args.sizes:
            out = folder / f"fused_{size}px.tif"
            r = run_fuse(hsi, msis[size], out, args.steps, args.torch_threads, args.threads)
            results[size] = r
            print(f"{f'{size} x {size}':>11} {r['ratio']:6.1f} {r['wall']:8.1f} {r['train']:8.1f} {r['write']:8.1f} "
                  f"{r['pixels'] / r['wall'] / 1e6:7.3f} {r['pixels'] / r['write']:11.0f} {r['peak_mb']:12.0f} "
                  f"{r['size_gb']:10.2f} {100 * r['srf_rel']:9.2f}", flush=True)
            if not args.keep:
                out.unlink()
        print()
        small, large = min(args.sizes), max(args.sizes)
        growth = results[large]["peak_mb"] / results[small]["peak_mb"]
        verdict = "PASS" if growth <= 1.2 else "FAIL"
        print(f"peak RSS {large} x {large} / {small} x {small} = {growth:.3f} (must be <= 1.2: {verdict}); "
              f"{results[large]['pixels'] / results[small]['pixels']:.0f} x the pixels, "
              f"write time x {results[large]['write'] / results[small]['write']:.1f}")
        return 0 if growth <= 1.2 else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
