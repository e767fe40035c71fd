"""Wald-protocol benchmark on the real EnMAP Potsdam cube: bicubic, GSA and SpectraLift side by side.

Protocol (SpectraLift reference, Shah & Duarte 2025): the 218 good bands of the EnMAP L2A cube
(sample_data/enmap_l2a_potsdam_mosaic_128x64_224b.tif, bbl=0 bands dropped) are normalised once
(global 1st/99th percentile -> [0, 1]) and serve as ground truth. LR-HSI = Gaussian PSF 15 × 15,
sigma 3.4 (zero border) + 4 × 4 block average + noise at 35 dB; HR-MSI = cube · Rᵀ + noise at
40 dB, R from the Sentinel-2A curves; seed 42. Two MSI band sets: 4 and 10 Sentinel-2 bands.

    python benchmarks/potsdam_wald.py [--seeds N] [--threads T] [--markdown docs/benchmarks-potsdam.md]

``--seeds N`` trains SpectraLift with seeds 42 .. 42+N-1 on the same simulated data and prints
mean ± std (the spread of training). ``--markdown PATH`` also writes the printed report into PATH
between the result markers (the rest of that file is kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(REPO))

from geolift import evaluate as ev  # noqa: E402
from geolift import srf  # noqa: E402
from geolift.model import SpectraLift  # noqa: E402

CUBE = REPO / "sample_data" / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
CASES = {
    "(a) Sentinel-2A B2,B3,B4,B8 (4 bands)": ["B2", "B3", "B4", "B8"],
    "(b) Sentinel-2A B2-B8A,B11,B12 (10 bands)": ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"],
}
RATIO, SIGMA, HALF_WIDTH, SNR_HSI, SNR_MSI, DATA_SEED = 4, 3.4, 7, 35.0, 40.0, 42
METRICS = ["PSNR", "SAM", "SSIM", "ERGAS", "RMSE", "SAM88", "PSNRu8"]
DARK_SHARE = 12  # % of pixels, the dark water of the scene (sample_data/PROVENANCE.md)
REFERENCE = "official SpectraLift (TF, 2500 epochs, seed 42) on this protocol: 27.2 dB (4 bands), 32.9 dB (10 bands)"
START, END = "<!-- potsdam_wald results: start -->", "<!-- potsdam_wald results: end -->"


def read_cube(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cube (good bands only, nodata -> NaN), band centres and FWHM in nm, by increasing wavelength.

    EnMAP's VNIR and SWIR detectors overlap (VNIR ends at 993 nm, SWIR starts at 902 nm), so file
    order is not wavelength order; sorting changes no metric (all are band-order invariant).
    """
    with rasterio.open(path) as ds:
        cube = ds.read().astype(np.float32)
        tags = [ds.tags(i + 1) for i in range(ds.count)]
        nodata = ds.nodata
    if nodata is not None:
        cube[cube == nodata] = np.nan
    good = np.array([tag.get("bbl", "1") != "0" for tag in tags])
    wavelengths = np.array([float(tag["wavelength"]) for tag in tags])
    fwhm = np.array([float(tag["fwhm"]) for tag in tags])
    order = np.flatnonzero(good)[np.argsort(wavelengths[good], kind="stable")]
    return cube[order], wavelengths[order], fwhm[order]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}; {os.cpu_count()} logical cores ({usable} usable); torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; numpy {np.__version__}; Python {platform.python_version()}"
    )


def reference_psnr(gt: np.ndarray, fused: np.ndarray) -> float:
    """PSNR as the reference code computes it: both cubes cast to uint8 (x·255, clipped, truncated), peak 255."""
    def as_uint8(cube: np.ndarray) -> np.ndarray:
        return np.clip(cube * 255.0, 0, 255).astype(np.uint8).astype(np.float64)

    mse = np.mean((as_uint8(gt) - as_uint8(fused)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def score(gt: np.ndarray, fused: np.ndarray, dark: np.ndarray) -> dict:
    """all_metrics plus two diagnostics: SAM88 (SAM without the darkest 12 % of pixels), PSNRu8."""
    metrics = ev.all_metrics(gt, fused, RATIO)
    metrics["SAM88"] = ev.sam(np.where(dark, np.nan, gt), fused)  # NaN pixels are left out
    metrics["PSNRu8"] = reference_psnr(gt, fused)
    return metrics


def row(name: str, metrics: dict, train_s: float | None, infer_s: float) -> str:
    train = "-" if train_s is None else f"{train_s:.1f}"
    return (
        f"{name:<28} {metrics['PSNR']:7.2f} {metrics['SAM']:7.2f} {metrics['SSIM']:7.4f} "
        f"{metrics['ERGAS']:7.3f} {metrics['RMSE']:8.5f} {metrics['SAM88']:7.2f} {metrics['PSNRu8']:7.2f} "
        f"{train:>8} {infer_s:8.2f}"
    )


def spread_rows(runs: list[dict]) -> list[str]:
    """Mean and sample standard deviation over the training seeds, in the table's columns."""
    keys = METRICS + ["train_s", "infer_s"]
    mean = {key: float(np.mean([run[key] for run in runs])) for key in keys}
    std = {key: float(np.std([run[key] for run in runs], ddof=1)) for key in keys}
    return [
        row(f"SpectraLift mean (n={len(runs)})", mean, mean["train_s"], mean["infer_s"]),
        row("SpectraLift std", std, std["train_s"], std["infer_s"]),
    ]


def run_case(title: str, bands: list[str], cube, wavelengths, fwhm, seeds: list[int], steps, say) -> None:
    R = srf.response_matrix("sentinel2a", bands, wavelengths, fwhm)
    case = ev.make_wald_case(
        cube, R, ratio=RATIO, psf=ev.gaussian_psf(SIGMA, HALF_WIDTH), snr_hsi_db=SNR_HSI, snr_msi_db=SNR_MSI,
        seed=DATA_SEED,
    )
    shape = case.gt.shape[1:]
    brightness = case.gt.mean(axis=0)
    dark = brightness < np.percentile(brightness, DARK_SHARE)
    say("")
    say(f"{title}: gt {case.gt.shape}, LR-HSI {case.lr_hsi.shape}, HR-MSI {case.hr_msi.shape}")
    say(f"{'method':<28} {'PSNR':>7} {'SAM':>7} {'SSIM':>7} {'ERGAS':>7} {'RMSE':>8} {'SAM88':>7} {'PSNRu8':>7} "
        f"{'train_s':>8} {'infer_s':>8}")

    baselines = {
        "bicubic": lambda: ev.bicubic_upsample(case.lr_hsi, shape),
        "GSA (blind, box degrade)": lambda: ev.gsa_fusion(case.lr_hsi, case.hr_msi, RATIO),
        "GSA (true PSF, oracle)": lambda: ev.gsa_fusion(case.lr_hsi, case.hr_msi, RATIO, psf=case.psf),
    }
    for name, method in baselines.items():
        t0 = time.perf_counter()
        fused = method()
        seconds = time.perf_counter() - t0
        say(row(name, score(case.gt, fused, dark), None, seconds))

    runs = []
    for seed in seeds:
        options = {} if steps is None else {"steps": steps}
        model = SpectraLift(seed=seed, value_range=(0.0, 1.0), **options)
        t0 = time.perf_counter()
        model.fit(case.lr_hsi, case.R, hr_msi=case.hr_msi)  # the student learns the scene's HR pixels
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fused = model.predict(case.hr_msi, consistency=False)  # the network alone, as its recorded figures
        infer_s = time.perf_counter() - t0
        metrics = score(case.gt, fused, dark)
        runs.append({**metrics, "train_s": train_s, "infer_s": infer_s})
        say(row(f"SpectraLift seed {seed}", metrics, train_s, infer_s))
    if len(runs) > 1:
        for line in spread_rows(runs):
            say(line)


def write_markdown(path: Path, command: str, lines: list[str]) -> None:
    block = "\n".join(
        [START, f"Command: `{command}`  ", f"Date: {dt.date.today().isoformat()}", "", "```text", *lines, "```", END]
    )
    text = path.read_text() if path.exists() else "# Potsdam Wald-protocol benchmark\n\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="SpectraLift training seeds 42, 43, ... (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the model's, 2500)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report into this file")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    torch.set_num_threads(args.threads)

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    cube, wavelengths, fwhm = read_cube(CUBE)
    say("Potsdam Wald-protocol benchmark (geolift)")
    say(f"data: {CUBE.relative_to(REPO)}, {cube.shape[0]} good bands (bbl=0 dropped), "
        f"{cube.shape[1]} x {cube.shape[2]} px")
    say(
        f"protocol: normalise once (global 1st/99th pct -> [0,1]); LR-HSI = Gaussian PSF {2 * HALF_WIDTH + 1}x"
        f"{2 * HALF_WIDTH + 1} sigma {SIGMA} (zero border) + {RATIO}x{RATIO} block mean + {SNR_HSI:g} dB; "
        f"HR-MSI = cube.R^T + {SNR_MSI:g} dB; data seed {DATA_SEED}"
    )
    say("metrics: PSNR dB (range 1, one MSE over the cube), SAM deg, SSIM (11x11 Gaussian), ERGAS (100/ratio), RMSE;")
    say(f"         SAM88 = SAM without the {DARK_SHARE}% darkest pixels of the truth (water, spectra near 0);")
    say("         PSNRu8 = PSNR as the reference code computes it (both cubes cast to uint8, peak 255)")
    say(f"SpectraLift: model defaults{'' if args.steps is None else f' but steps={args.steps}'}, value_range=(0, 1)")
    say(f"machine: {machine()}")
    say(f"reference: {REFERENCE}")
    seeds = [DATA_SEED + i for i in range(args.seeds)]
    for title, bands in CASES.items():
        run_case(title, bands, cube, wavelengths, fwhm, seeds, args.steps, say)

    if args.markdown is not None:
        command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        write_markdown(args.markdown, command, lines)


if __name__ == "__main__":
    main()
