"""The default recipe against the faithful one under HyperBench's ten PSF families (one run, one machine).

HyperBench (PyPI ``hyperbench`` 0.1.0, by the SpectraLift authors) degrades its test scenes with ten PSF families;
one of them, a radial sinc with strong negative side lobes, made the consistency step cost several dB. The
families are written here from their formulas (HyperBench's ``degradations/psf.py`` lists them; nothing of its code
is used), on integer offsets within ``radius`` and normalised to sum 1, and applied to Potsdam Wald cases with
geolift's own ``make_wald_case``. For each case: the faithful preset, the default preset's network alone, and the
default as ``SpectraLift.predict`` gives it (the consistency step, with the blur model it chose: the fitted
Gaussian or, where that cannot explain the data, a free-form kernel; or, where the blur-model check refuses both, the
network alone). PSNR in dB; the last line says whether any case falls more than 0.1 dB below the faithful preset.

    python benchmarks/psf_zoo.py [--steps 800] [--seeds 0] [--sigmas 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.special import kv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import read_potsdam_cube

from geolift import evaluate as ev
from geolift import refine as rf
from geolift import srf
from geolift.model import SpectraLift


def _radius_grid(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    x, y = np.meshgrid(offsets, offsets)
    return x, y, np.hypot(x, y)


def family_kernel(name: str, sigma: float, radius: int = 7) -> np.ndarray:
    """The family's kernel (as HyperBench defines it) with width ``sigma`` in HR pixels, summing to 1."""
    x, y, r = _radius_grid(radius)
    if name == "gaussian":
        k = np.exp(-r**2 / (2 * sigma**2))
    elif name == "kolmogorov":
        k = np.exp(-((r / sigma) ** (5.0 / 3.0)))
    elif name == "airy":  # HyperBench's "Airy-style" form: (2 K1(z) / z)^2 with z = 2.33811 r / sigma
        z = 2.33811 * r / sigma
        k = np.ones_like(r)
        k[r > 0] = (2 * kv(1, z[r > 0]) / z[r > 0]) ** 2
    elif name == "moffat":
        k = (1 + (r / sigma) ** 2) ** -3.5
    elif name == "sinc":
        k = np.sinc(r / sigma)
    elif name == "lorentzian2":
        k = 1 / (1 + (r / sigma) ** 4)
    elif name == "hermite":  # Gaussian times the first Hermite polynomial H1(r / sigma) = 2 r / sigma: a ring
        k = np.exp(-r**2 / (2 * sigma**2)) * 2 * r / sigma
    elif name == "parabolic":
        k = np.maximum(0.0, 1 - (r / sigma) ** 2)
    elif name == "gabor":  # theta 0, wavelength 1 px, aspect 0.5, phase 0
        k = np.exp(-0.5 * (x**2 + 0.25 * y**2) / sigma**2) * np.cos(2 * np.pi * x)
    elif name == "delta":
        k = (r == 0).astype(np.float64)
    else:
        raise ValueError(name)
    return k / k.sum()


FAMILIES = ("gaussian", "kolmogorov", "airy", "moffat", "sinc", "lorentzian2", "hermite", "parabolic", "gabor",
            "delta")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0])
    args = parser.parse_args(argv)
    cube, wavelengths, fwhm, _, _ = read_potsdam_cube()
    configs = [(4, ["B2", "B3", "B4", "B8"]), (8, ["B2", "B3", "B4", "B8"]),
               (4, ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A"])]
    print(f"{'ratio':>5} {'bands':>5} {'PSF':<16}{'faithful':>9}{'network':>9}{'default':>9}{'d - f':>7}  consistency")
    worst, started = [], time.perf_counter()
    for ratio, bands in configs:
        R = srf.response_matrix("sentinel2a", bands, wavelengths, fwhm_nm=fwhm)
        for family in FAMILIES:
            for sigma in args.sigmas if family != "delta" else [1.0]:
                case = ev.make_wald_case(cube, R, ratio=ratio, psf=family_kernel(family, sigma), seed=42)
                scores = {"faithful": [], "network": [], "default": []}
                refused = False
                for seed in args.seeds:
                    common = dict(seed=seed, steps=args.steps, value_range=(0, 1), num_threads=1)
                    faithful = SpectraLift(preset="spectralift", **common).fit(case.lr_hsi, case.R)
                    default = SpectraLift(**common).fit(case.lr_hsi, case.R)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        fused = default.predict(case.hr_msi)
                    refused |= any("Consistency step skipped" in str(w.message) for w in caught)
                    scores["faithful"].append(ev.psnr(case.gt, faithful.predict(case.hr_msi)))
                    scores["network"].append(ev.psnr(case.gt, default.predict(case.hr_msi, consistency=False)))
                    scores["default"].append(ev.psnr(case.gt, fused))
                f, n, d = (float(np.mean(scores[k])) for k in ("faithful", "network", "default"))
                blur_model = rf.estimate_psf_central(
                    case.lr_hsi, lambda w, hr=case.hr_msi: hr[:, w.row_off:w.row_off + w.height,
                                                            w.col_off:w.col_off + w.width],
                    case.R, rf.GridPair.aligned(case.lr_hsi.shape[1:], ratio)).family
                worst.append(d - f)
                label = f"{family} {sigma:g}" if family != "delta" else family
                print(f"{ratio:>5} {len(bands):>5} {label:<16}{f:>9.2f}{n:>9.2f}{d:>9.2f}{d - f:>+7.2f}  "
                      f"{'refused (blur model)' if refused else f'applied ({blur_model} kernel)'}", flush=True)
    seconds = time.perf_counter() - started
    print(f"\n{len(worst)} cases, {len(args.seeds)} seed(s), {args.steps} steps, {seconds:.0f} s; "
          f"mean default - faithful {np.mean(worst):+.2f} dB, worst {min(worst):+.2f} dB; "
          f"cases below -0.1 dB: {sum(w < -0.1 for w in worst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
