"""What ``--cog`` costs: time, file size, disk and peak memory of a Cloud-Optimized GeoTIFF against the plain output.

Two cases, each written twice (plain, then ``--cog``), every run in a child process of its own so that its peak
RSS (``os.wait4``'s resource usage of that one child) counts nothing else:

* **Berlin**: ``geolift fuse`` on the bundled pair (494 x 660 px, 177 bands, int16), the whole command; the
  ``--report`` JSON splits the time into training, writing and the COG step (``cog_seconds``).
* **Synthetic**: the writer alone (:class:`geolift.io.HSIWriter`, as ``geolift fuse`` drives it) streaming a
  ``--size`` x ``--size`` px, ``--bands``-band int16 cube (scale 1e-4) block by block; the values are smooth
  spectra times smooth spatial patterns (sums of a few sinusoids, plus a little noise), so DEFLATE compresses them
  about as it does real reflectance, not like white noise. No block is held longer than it is written.

The disk peak of a COG run is the plain temporary (with its overviews) plus the COG, both next to the output; it is
reported (synthetic case) as the size of that temporary, measured once its overviews are built, plus the COG.

    python benchmarks/cog_cost.py [--size 2048] [--bands 100] [--steps 100] [--keep DIR]

Set ``GDAL_CACHEMAX`` (e.g. 256, in MB) in the environment to see how it bounds the COG step's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BERLIN = (REPO / "sample_data" / "enmap_sim_berlin_30m_177b.tif", REPO / "sample_data" / "hymap_berlin_3p6m_4b.tif")


def popen_peak(argv: list[str]) -> tuple[float, float, str]:
    """Like :func:`run_child`, but waits with ``os.wait4`` itself so the child's own peak RSS is known."""
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def write_synthetic(path: str, size: str, bands: int, cog: bool) -> None:
    """Child: stream a synthetic int16 cube through HSIWriter; print the COG step's seconds and the temp size."""
    import numpy as np
    from rasterio.transform import from_origin

    from geolift.grid import Grid
    from geolift.io import Encoding, HSIWriter, OutputBands

    wavelengths = np.linspace(420.0, 2440.0, bands)
    rng = np.random.default_rng(0)
    spectra = np.stack([0.05 + 0.4 * np.abs(np.sin(wavelengths / w)) for w in (150.0, 290.0, 610.0)])  # (3, bands)
    width, _, height = size.partition("x")
    grid = Grid("EPSG:32633", from_origin(380000.0, 5820000.0, 2.5, 2.5), int(width), int(height or width))
    encoding = Encoding(dtype="int16", scale=1e-4, cog=cog)
    sizes = {"temp_bytes": 0}

    class Writer(HSIWriter):
        def _build_overviews(self, resampling: str) -> None:  # the plain temporary at its largest, with overviews
            super()._build_overviews(resampling)
            sizes["temp_bytes"] = os.path.getsize(self.temp_path)

    with Writer(path, grid, OutputBands(wavelengths, np.full(bands, 10.0)), encoding, overwrite=True) as writer:
        for window in writer.block_windows():
            rows = np.arange(window.row_off, window.row_off + window.height)[:, None]
            cols = np.arange(window.col_off, window.col_off + window.width)[None, :]
            mix = np.stack([(np.sin(rows / p + cols / q) + 1.0) / 2.0 for p, q in ((90, 140), (37, 55), (300, 210))])
            mix /= mix.sum(axis=0, keepdims=True)
            block = np.tensordot(spectra.T, mix, axes=1).astype(np.float32)  # (bands, rows, cols)
            block += rng.normal(0.0, 0.002, block.shape).astype(np.float32)
            writer.write_block(block, window)
    print(json.dumps({"cog_seconds": writer.cog_seconds, **sizes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2048", help="WIDTH or WIDTHxHEIGHT of the synthetic output")
    parser.add_argument("--bands", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--child", nargs=4, metavar=("PATH", "SIZE", "BANDS", "COG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, size, bands, cog = args.child
        write_synthetic(path, size, int(bands), cog == "1")
        return

    folder = Path(tempfile.mkdtemp(prefix="geolift-cog-cost-", dir=args.keep))
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    rows = []
    try:
        for cog in (False, True):
            out = folder / f"berlin{'_cog' if cog else ''}.tif"
            report = folder / f"berlin{'_cog' if cog else ''}.json"
            argv = [sys.executable, "-m", "geolift", "fuse", *map(str, BERLIN), "-o", str(out), "--steps",
                    str(args.steps), "--progress", "none", "--quiet", "--report", str(report), "--overwrite"]
            seconds, peak, _ = popen_peak(argv + (["--cog"] if cog else []))
            data = json.loads(report.read_text())
            rows.append(("Berlin fuse (494x660x177 int16)", "COG" if cog else "plain", seconds,
                         data["write_seconds"], data.get("cog_seconds", 0.0), out.stat().st_size, peak, None))
        for cog in (False, True):
            out = folder / f"synthetic{'_cog' if cog else ''}.tif"
            argv = [sys.executable, __file__, "--child", str(out), str(args.size), str(args.bands), "1" if cog else "0"]
            seconds, peak, stdout = popen_peak(argv)
            data = json.loads(stdout.strip().splitlines()[-1])
            shape = args.size if "x" in args.size else f"{args.size}x{args.size}"
            rows.append((f"synthetic writer ({shape}x{args.bands} int16)", "COG" if cog else "plain",
                         seconds, seconds, data["cog_seconds"], out.stat().st_size, peak,
                         data["temp_bytes"] + out.stat().st_size if cog else None))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'case':44} {'output':6} {'wall s':>7} {'write s':>8} {'COG step s':>10} {'size MB':>8} "
          f"{'peak RSS MB':>11} {'disk peak MB':>12}")
    for case, kind, wall, write, cog_s, size, peak, disk in rows:
        disk_text = f"{disk / 1e6:12.1f}" if disk else f"{'':>12}"
        print(f"{case:44} {kind:6} {wall:7.1f} {write:8.1f} {cog_s:10.1f} {size / 1e6:8.1f} {peak:11.0f} {disk_text}")


if __name__ == "__main__":
    main()
