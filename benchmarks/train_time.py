"""Training time and the cost of pixel sampling.

1. Quality: on Potsdam Wald cases, full-batch training vs the stratified sample forced small
   (``max_train_pixels`` = a quarter of the LR pixels), same seeds; the network output alone (no refine).
2. Time: ``SpectraLift()`` (geolift preset: 2500 steps on at most 4096 sampled pixels per step) on a synthetic
   1000 x 1000 x 200 LR-HSI whose spectra are real Potsdam spectra (each LR pixel one of the cube's 8192 spectra
   times a brightness factor, so the scene has real spectral diversity; made in a second).

    python benchmarks/train_time.py [--threads 1 2] [--caps 0 1024 4096] [--seeds 3] [--skip-quality] [--skip-time]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

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
                model.fit(case.lr_hsi, case.R, hr_msi=case.hr_msi)
                fused = model.predict(case.hr_msi, consistency=False)  # the network's
                out.append(ev.psnr(case.gt, fused))
        d = float(np.mean(sampled) - np.mean(full))
        diffs.append(d)
        print(f"  {bands} ratio {ratio}: {n} LR px, cap {cap}: full {np.mean(full):.2f} "
              f"(sd {np.std(full, ddof=1) if len(full) > 1 else 0:.2f}), sampled {np.mean(sampled):.2f} "
              f"(sd {np.std(sampled, ddof=1) if len(sampled) > 1 else 0:.2f}), difference {d:+.2f} dB", flush=True)
    print(f"  mean difference {np.mean(diffs):+.2f} dB (target: within 0.1 dB)")


def synthetic_scene(cube, size: int = 1000, bands: int = 200) -> np.ndarray:
    """(bands, size, size) float32 LR-HSI of real Potsdam spectra times a brightness factor, built in chunks."""
    spectra = np.ascontiguousarray(cube[:bands].reshape(bands, -1).T)  # (8192, bands) real spectra
    rng = np.random.default_rng(0)
    n = size * size
    index = rng.integers(0, spectra.shape[0], size=n)
    brightness = rng.uniform(0.8, 1.2, size=n).astype(np.float32)
    lr = np.empty((bands, n), np.float32)
    for a in range(0, n, 65536):
        lr[:, a:a + 65536] = (spectra[index[a:a + 65536]] * brightness[a:a + 65536, None]).T
    return lr.reshape(bands, size, size)


def one_fit(cap: int | None, threads: int) -> dict:
    """Fit once on the synthetic full scene (in this process) and return time and memory figures."""
    import resource

    cube, wavelengths, fwhm = read_cube(CUBE)
    t0 = time.perf_counter()
    lr = synthetic_scene(cube)
    made = time.perf_counter() - t0
    del cube
    R = srf.response_matrix("sentinel2a", BANDS["4b"], wavelengths[:200], fwhm[:200])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kwargs = {} if cap is None else {"max_train_pixels": cap}
    model = SpectraLift(seed=0, num_threads=threads, **kwargs)
    # the student's HR pixels (the default trains one on the members' mean): the scene's own MSI stands in for an
    # HR-MSI, which only supplies its DISTILL_PIXELS grid pixels
    msi = np.tensordot(R, lr, axes=1).astype(np.float32) if model.distills else None
    t0 = time.perf_counter()
    model.fit(lr, R, hr_msi=msi)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "made": made, "peak_mb": peak, "before_mb": before, "steps": model.steps,
            "cap": model.max_train_pixels, "pixels": model.n_train_pixels, "shape": list(lr.shape)}


def full_scene_time(caps: list[int | None], threads: list[int]) -> None:
    """Each configuration in its own child process, so its peak RSS is its own."""
    import json
    import subprocess

    print("full-scene fit: LR-HSI 200 x 1000 x 1000 float32 (0.8 GB), 1 000 000 valid px, geolift preset, "
          "Sentinel-2 B2,B3,B4,B8; each run in a fresh process:")
    for cap in caps:
        for n in threads:
            cmd = [sys.executable, __file__, "--one-fit", str(cap or 0), str(n)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"  cap {r['cap']} px/step x {r['steps']} steps, {n} torch thread(s): fit {r['seconds']:.1f} s "
                  f"(target <= 60 s); peak RSS {r['peak_mb']:.0f} MB, of which the scene and libraries "
                  f"{r['before_mb']:.0f} MB -> fit adds {r['peak_mb'] - r['before_mb']:.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to time")
    parser.add_argument("--caps", type=int, nargs="+", default=[0],
                        help="max_train_pixels values to time on the full scene (0: the preset's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--one-fit", nargs=2, type=int, metavar=("CAP", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_fit:
        import json

        cap, threads = args.one_fit
        print(json.dumps(one_fit(cap or None, threads)))
        return
    print(f"machine: {machine()}")
    if not args.skip_quality:
        cube, wavelengths, fwhm = read_cube(CUBE)
        sampling_quality(cube, wavelengths, fwhm, [42 + i for i in range(args.seeds)])
    if not args.skip_time:
        full_scene_time([c or None for c in args.caps], args.threads)


if __name__ == "__main__":
    main()
