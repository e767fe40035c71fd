"""The pair check's figures on pairs known to be good and on the same pairs broken on purpose.

``geolift.checks`` decides whether an HSI/MSI pair is consistent from four figures measured before training (lowest
band correlation, band gains, LR residual, co-registration peak). This script prints them for

* good pairs: the bundled Berlin pair (real EnMAP-simulated + HyMap), and Wald cases from the Potsdam EnMAP cube with
  Sentinel-2A (4 and 10 bands) and WorldView-3 (8 VNIR bands);
* the same pairs broken as users break them: bands in reverse order, bands named one place off, the MSI in other
  units (x 10000), clouds on 25 % of the MSI, the MSI of another place (mirrored), the wrong sensor's bands,

so that the thresholds in ``geolift/checks.py`` can be read off the table (docs/benchmarks.md keeps a copy).

    python benchmarks/pair_checks.py [--markdown FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from potsdam_wald import CUBE, read_cube  # noqa: E402

from geolift import evaluate as ev  # noqa: E402
from geolift import srf  # noqa: E402
from geolift.fuse import FuseOptions, prepare_fusion  # noqa: E402

SAMPLE = REPO / "sample_data"
S2_4 = ["B2", "B3", "B4", "B8"]
S2_10 = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
WV3 = [f"B{k}" for k in range(1, 9)]


def write(path: Path, data: np.ndarray, transform: Affine, crs, wavelengths=None, fwhm=None) -> Path:
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="float32",
                   crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(np.float32))
        for i in range(data.shape[0]):
            if wavelengths is not None:
                ds.update_tags(i + 1, wavelength=str(wavelengths[i]), fwhm=str(fwhm[i]), wavelength_units="nm")
    return path


def clouds(msi: np.ndarray, share: float, seed: int = 3) -> np.ndarray:
    """Bright, spectrally flat blobs (reflectance 0.7) over about ``share`` of the scene."""
    rng = np.random.default_rng(seed)
    rows, cols = msi.shape[1:]
    yy, xx = np.mgrid[:rows, :cols]
    mask = np.zeros((rows, cols), bool)
    while mask.mean() < share:
        cy, cx, radius = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(4, 10)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
    out = msi.copy()
    out[:, mask] = 0.7
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, help="also write the table into this file")
    args = parser.parse_args(argv)
    logging.getLogger("geolift").setLevel(logging.ERROR)
    cube, wavelengths, fwhm = read_cube(CUBE)
    with rasterio.open(CUBE) as ds:
        crs, hr = ds.crs, ds.transform
    lr = hr @ Affine.scale(4)
    folder = Path(tempfile.mkdtemp(prefix="geolift-pair-checks-"))
    cases = []
    sensors = (("sentinel2a", S2_4, "S2 x4"), ("sentinel2a", S2_10, "S2 x10"), ("worldview3", WV3, "WV3 x8"))
    for sensor, bands, tag in sensors:
        R = srf.build_response(sensor, bands, wavelengths, fwhm_nm=fwhm, min_coverage=0.01).matrix
        case = ev.make_wald_case(cube, R, ratio=4, seed=7)
        hsi = write(folder / f"hsi_{tag.replace(' ', '')}.tif", case.lr_hsi, lr, crs, wavelengths, fwhm)
        msi = case.hr_msi
        name = tag.replace(" ", "")
        cases.append((f"good: Potsdam Wald, {tag}", hsi, write(folder / f"{name}.tif", msi, hr, crs), sensor, bands))
        if tag == "S2 x10":
            cases.append((f"broken: {tag}, --bands reversed", hsi, folder / f"{name}.tif", sensor, bands[::-1]))
        if tag == "S2 x4":
            cases.append(("broken: B2 B3 B4 named B1 B2 B3", hsi, write(folder / "three.tif", msi[:3], hr, crs),
                          sensor, ["B1", "B2", "B3"]))
            cases.append(("broken: MSI x 10000 (units)", hsi, write(folder / "units.tif", msi * 10000, hr, crs),
                          sensor, bands))
            cases.append(("broken: clouds on 25 % of the MSI", hsi, write(folder / "clouds.tif", clouds(msi, 0.25),
                                                                         hr, crs), sensor, bands))
            cases.append(("broken: clouds on 10 % of the MSI", hsi, write(folder / "clouds10.tif",
                                                                         clouds(msi, 0.10), hr, crs), sensor, bands))
            cases.append(("broken: MSI of another place (mirrored)", hsi,
                          write(folder / "mirror.tif", msi[:, :, ::-1], hr, crs), sensor, bands))
            cases.append(("broken: the wrong sensor bands (B5 B6 B7 B8A)", hsi, folder / f"{name}.tif", sensor,
                          ["B5", "B6", "B7", "B8A"]))
    berlin_hsi, berlin_msi = SAMPLE / "enmap_sim_berlin_30m_177b.tif", SAMPLE / "hymap_berlin_3p6m_4b.tif"
    cases.insert(0, ("good: Berlin sample pair (real)", berlin_hsi, berlin_msi, None, None))
    cases.append(("broken: Berlin HyMap named Sentinel-2 B5 B6 B7 B8A", berlin_hsi, berlin_msi, "sentinel2a",
                  ["B5", "B6", "B7", "B8A"]))

    lines = ["| pair | verdict | lowest band r | gains | LR residual | shift peak |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for title, hsi_path, msi_path, sensor, bands in cases:
        options = FuseOptions(sensor=sensor, bands=tuple(bands) if bands else None, preset="spectralift", steps=1,
                              drop_uncovered=True)
        report = prepare_fusion(str(hsi_path), str(msi_path), options).report
        c = report.pair_check
        line = (f"| {title} | {c['verdict']} | {c['min_correlation']:.2f} | {c['gain_range'][0]:.3g}-"
                f"{c['gain_range'][1]:.3g} | {100 * c['lr_residual']:.1f} % | {c['shift_peak']:.2f} |")
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
