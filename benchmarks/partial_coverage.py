"""How much of an MSI band must the HSI cover for the band to help? Evidence for ``srf.MIN_COVERAGE``.

A real MSI band sees its whole response; when the HSI's range ends inside it, geolift can only build the band's row of
``R`` from the covered part (truncated and renormalised), so the synthetic LR-MSI the network trains on differs from
what the sensor measured. This benchmark measures, on Wald cases, whether using such a band still beats leaving it
out, as its coverage shrinks.

Set-up (Potsdam EnMAP L2A cube, 218 good bands, 418-2445 nm; Wald protocol at ratio 4, Gaussian PSF, SNR 35/40 dB):
the HR-MSI is simulated from the *full* cube with each band's full response (what the sensor sees); the HSI and the
ground truth keep only the bands above a cut-off wavelength, moved so that one MSI band is covered 100 % ... 10 %.
Each case is fused twice with the same seed: with the partly covered band (its response truncated to the HSI's
range, as geolift does) and without it. Two sensors: Sentinel-2A B2, B3, B4, B8 (B2 cut) and WorldView-3's eight
VNIR bands (B1 "coastal", 400-450 nm, cut; B2 is cut along with it at the smallest coverages).

    python benchmarks/partial_coverage.py [--seeds 2] [--steps 2500] [--markdown docs/partial-coverage.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from potsdam_wald import CUBE, read_cube  # noqa: E402

from geolift import evaluate as ev  # noqa: E402
from geolift import srf  # noqa: E402
from geolift.errors import SpectralCoverageError  # noqa: E402
from geolift.model import SpectraLift  # noqa: E402

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
CASES = {"Sentinel-2A B2 (B2 B3 B4 B8)": ("sentinel2a", ["B2", "B3", "B4", "B8"], "B2"),
         "WorldView-3 B1 (8 VNIR bands)": ("worldview3", ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"], "B1")}


def coverage_of(curves: srf.SRFSet, band: str, wavelengths: np.ndarray, fwhm: np.ndarray) -> float:
    try:
        response = srf.build_response(curves, [band], wavelengths, fwhm_nm=fwhm, units="nm", min_coverage=1e-6)
    except SpectralCoverageError:  # not covered at all
        return 0.0
    return response.coverage[band]


def cut_for(curves: srf.SRFSet, band: str, target: float, wavelengths: np.ndarray, fwhm: np.ndarray) -> int:
    """Index of the first HSI band to keep so that ``band`` is covered about ``target`` (nearest achievable)."""
    best, best_gap = 0, np.inf
    for start in range(0, 40):
        gap = abs(coverage_of(curves, band, wavelengths[start:], fwhm[start:]) - target)
        if gap < best_gap:
            best, best_gap = start, gap
    return best


def fuse(lr: np.ndarray, msi: np.ndarray, R: np.ndarray, seed: int, steps: int) -> np.ndarray:
    # the network alone, as the figures in docs/benchmarks.md were measured (coverage is about the training)
    return SpectraLift(seed=seed, steps=steps).fit(lr, R, hr_msi=msi).predict(msi, consistency=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per case (42, 43, ...)")
    parser.add_argument("--steps", type=int, default=2500,
                        help="training steps (2500, as docs/benchmarks.md's figures were made)")
    parser.add_argument("--markdown", type=Path, help="also write the table into this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cube, wavelengths, fwhm = read_cube(CUBE)
    started = time.perf_counter()
    lines = [f"Potsdam Wald cases, ratio 4, default preset network ({args.steps} steps), seeds 42..{41 + args.seeds}; "
             "gain = with the band minus without it", "",
             "| case | coverage | HSI from | PSNR with | PSNR without | gain dB | SAM with | SAM without |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for title, (sensor, bands, cut_band) in CASES.items():
        curves = srf.load_sensor(sensor).select(bands)
        full_R = srf.build_response(curves, bands, wavelengths, fwhm_nm=fwhm, units="nm", drop_uncovered=True,
                                    min_coverage=1e-6)
        case = ev.make_wald_case(cube, full_R.matrix, ratio=4, seed=42)  # HR-MSI from the full response
        seen = set()
        for target in COVERAGES:
            start = cut_for(curves, cut_band, target, wavelengths, fwhm)
            if start in seen or coverage_of(curves, cut_band, wavelengths[start:], fwhm[start:]) == 0.0:
                continue
            seen.add(start)
            wl, fw = wavelengths[start:], fwhm[start:]
            coverage = {b: coverage_of(curves, b, wl, fw) for b in bands}
            used = [b for b in bands if coverage[b] > 0.0]
            without = [b for b in used if b != cut_band]
            rows = [bands.index(b) for b in used]
            gt, lr = case.gt[start:], case.lr_hsi[start:]
            R_with = srf.build_response(curves, used, wl, fwhm_nm=fw, units="nm", min_coverage=1e-6).matrix
            R_without = srf.build_response(curves, without, wl, fwhm_nm=fw, units="nm", min_coverage=1e-6).matrix
            scores = {"with": [], "without": []}
            for seed in range(42, 42 + args.seeds):
                fused = fuse(lr, case.hr_msi[rows], R_with, seed, args.steps)
                scores["with"].append((ev.psnr(gt, fused), ev.sam(gt, fused)))
                keep = [bands.index(b) for b in without]
                fused = fuse(lr, case.hr_msi[keep], R_without, seed, args.steps)
                scores["without"].append((ev.psnr(gt, fused), ev.sam(gt, fused)))
            (p_with, s_with), (p_without, s_without) = (np.mean(scores["with"], 0), np.mean(scores["without"], 0))
            line = (f"| {title} | {coverage[cut_band]:.0%} | {wl[0]:.0f} nm | {p_with:.2f} | "
                    f"{p_without:.2f} | {p_with - p_without:+.2f} | {s_with:.2f} | {s_without:.2f} |")
            lines.append(line)
            print(line, flush=True)
    lines += ["", f"({time.perf_counter() - started:.0f} s)"]
    print(lines[-1])
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
