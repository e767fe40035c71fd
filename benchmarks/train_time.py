"""Training time and the cost of pixel sampling (issue 6).

1. Quality: on Potsdam Wald cases, full-batch training vs the stratified sample forced small
   (``max_train_pixels`` = a quarter of the LR pixels), same seeds; the network output alone (no refine).
2. Time: ``SpectraLift()`` (geolift preset: 2500 steps on at most 4096 sampled pixels per step) on a synthetic
   1000 x 1000 x 200 LR-HSI whose spectra are real Potsdam spectra (each LR pixel one of the cube's 8192 spectra
   times a brightness factor, so the scene has real spectral diversity; made in a second).

    python benchmarks/train_time.py [--threads 2] [--seeds 3] [--skip-quality]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from potsdam_wald import CUBE, machine, read_cube  # noqa: E402

from geolift import evaluate as ev  # noqa: E402
from geolift import srf  # noqa: E402
from geolift.model import SpectraLift  # noqa: E402

BANDS = {"4b": ["B2", "B3", "B4", "B8"], "10b": ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]}


def sampling_quality(cube, wavelengths, fwhm, seeds) -> None:
    print("sampling vs full batch (network output, PSNR dB, mean over seeds "
          f"{seeds}; Gaussian sigma 0.85*ratio, 35 dB):")
    diffs = []
    for bands, ratio in (("4b", 2), ("10b", 2), ("4b", 4)):
        R = srf.response_matrix("sentinel2a", BANDS[bands], wavelengths, fwhm)
        sigma = 0.85 * ratio
        case = ev.make_wald_case(cube, R, ratio=ratio, psf=ev.gaussian_psf(sigma, int(np.ceil(2.06 * sigma))),
                                 snr_hsi_db=35, snr_msi_db=40, seed=42)
        n = case.lr_hsi.shape[1] * case.lr_hsi.shape[2]
        cap = n // 4
        full, sampled = [], []
        for seed in seeds:
            for cap_value, out in ((None, full), (cap, sampled)):
                model = SpectraLift(seed=seed, value_range=(0, 1), num_threads=1, max_train_pixels=cap_value)
                out.append(ev.psnr(case.gt, model.fit(case.lr_hsi, case.R).predict(case.hr_msi)))
        d = float(np.mean(sampled) - np.mean(full))
        diffs.append(d)
        print(f"  {bands} ratio {ratio}: {n} LR px, cap {cap}: full {np.mean(full):.2f} "
              f"(sd {np.std(full, ddof=1) if len(full) > 1 else 0:.2f}), sampled {np.mean(sampled):.2f} "
              f"(sd {np.std(sampled, ddof=1) if len(sampled) > 1 else 0:.2f}), difference {d:+.2f} dB", flush=True)
    print(f"  mean difference {np.mean(diffs):+.2f} dB (target: within 0.1 dB)")


def full_scene_time(cube, wavelengths, fwhm, threads: int) -> None:
    spectra = cube[:200].reshape(200, -1).T  # (8192, 200) real spectra, first 200 good bands
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    index = rng.integers(0, spectra.shape[0], size=1000 * 1000)
    brightness = rng.uniform(0.8, 1.2, size=1000 * 1000).astype(np.float32)
    lr = (spectra[index] * brightness[:, None]).T.reshape(200, 1000, 1000)
    lr = np.ascontiguousarray(lr, dtype=np.float32)
    made = time.perf_counter() - t0
    R = srf.response_matrix("sentinel2a", BANDS["10b"][:4], wavelengths[:200], fwhm[:200])
    model = SpectraLift(seed=0, num_threads=threads)
    t0 = time.perf_counter()
    model.fit(lr, R)
    seconds = time.perf_counter() - t0
    print(f"full-scene fit: LR-HSI {lr.shape} float32 (made in {made:.1f} s), {model.n_train_pixels} valid px, "
          f"geolift preset ({model.steps} steps x {model.max_train_pixels} sampled px), {threads} torch threads: "
          f"{seconds:.1f} s (target <= 60 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    cube, wavelengths, fwhm = read_cube(CUBE)
    if not args.skip_quality:
        sampling_quality(cube, wavelengths, fwhm, [42 + i for i in range(args.seeds)])
    full_scene_time(cube, wavelengths, fwhm, args.threads)


if __name__ == "__main__":
    main()
