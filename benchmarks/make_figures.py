"""The user guide's before/after figure: the Berlin sample fused with ``geolift fuse``, LR-HSI vs fused.

    pip install matplotlib        # for this script only; geolift does not need it
    python benchmarks/make_figures.py [--steps 2500] [--fused FILE] [--out docs/img/berlin_before_after.png]

Without ``--fused`` the script runs ``geolift fuse`` on the Berlin pair in sample_data/ (EnMAP-simulated 30 m,
177 bands + HyMap 3.6 m, 4 bands) with the given number of steps, in a temporary folder. The figure shows the same
true-colour composite (bands nearest 640, 550 and 470 nm, one common stretch) of the LR-HSI and of the fused
HR-HSI, the whole scene and a zoom, next to the HyMap input, and the spectrum of one 3.6 m pixel: the LR-HSI pixel
(30 m) that contains it, the fused spectrum of that pixel, and the mean fused spectrum over the 30 m footprint
(which should match the LR-HSI pixel: the fusion adds spatial detail, not a different spectrum on average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

REPO = Path(__file__).resolve().parents[1]
HSI = REPO / "sample_data" / "enmap_sim_berlin_30m_177b.tif"
MSI = REPO / "sample_data" / "hymap_berlin_3p6m_4b.tif"
RGB_NM = (640.0, 550.0, 470.0)
ZOOM = (180, 250, 160, 160)  # col, row, width, height of the zoom, in fused (HyMap) pixels


def fuse(steps: int, folder: Path) -> Path:
    """Run the real command, as a user would, and return the output path."""
    out = folder / "enmap_sim_berlin_30m_177b_fused.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "geolift", "fuse", str(HSI), str(MSI), "--steps", str(steps),
                    "-o", str(out), "--overwrite", "--progress", "none", "--report", str(folder / "report.json")],
                   check=True, env=env)
    return out


def wavelengths(ds) -> np.ndarray:
    return np.array([float(ds.tags(b)["wavelength"]) for b in range(1, ds.count + 1)])


def stretch(rgb: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(3, rows, cols) -> (rows, cols, 3) in [0, 1] with per-channel limits; gamma 0.8 for a natural look."""
    scaled = (rgb - low[:, None, None]) / (high - low)[:, None, None]
    return np.clip(scaled, 0, 1).transpose(1, 2, 0) ** 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--fused", type=Path, help="an existing fused GeoTIFF of the Berlin pair")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "berlin_before_after.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    with tempfile.TemporaryDirectory() as tmp:
        fused_path = args.fused or fuse(args.steps, Path(tmp))
        with rasterio.open(HSI) as hsi_ds, rasterio.open(fused_path) as fused_ds, rasterio.open(MSI) as msi_ds:
            wl = wavelengths(hsi_ds)
            rgb_bands = [int(np.argmin(np.abs(wl - nm))) + 1 for nm in RGB_NM]
            hsi = hsi_ds.read(masked=True).astype(np.float64).filled(np.nan) / 10000
            fused = fused_ds.read(masked=True).astype(np.float64).filled(np.nan) / 10000
            msi = msi_ds.read(masked=True).astype(np.float64).filled(np.nan) / 10000
            hsi_transform, fused_transform = hsi_ds.transform, fused_ds.transform
            fused_bounds, hsi_bounds = fused_ds.bounds, hsi_ds.bounds
            msi_wl = wavelengths(msi_ds)
            msi_rgb = [int(np.argmin(np.abs(msi_wl - nm))) for nm in RGB_NM]
            report = json.loads(fused_ds.tags().get("geolift_report", "{}"))
    idx = [b - 1 for b in rgb_bands]
    low = np.nanpercentile(fused[idx], 2, axis=(1, 2))
    high = np.nanpercentile(fused[idx], 98, axis=(1, 2))
    fused_extent = (fused_bounds.left, fused_bounds.right, fused_bounds.bottom, fused_bounds.top)
    hsi_extent = (hsi_bounds.left, hsi_bounds.right, hsi_bounds.bottom, hsi_bounds.top)

    # One 3.6 m pixel that shows what fusion adds: a tree (NDVI > 0.6) inside a 30 m pixel that is mostly built-up
    # (NDVI < 0.3), not at the clipping limit (the network's output is clipped to the LR-HSI's value range), with
    # the brightest near-infrared (a sunlit crown) among those.
    red, nir = int(np.argmin(np.abs(wl - 660))), int(np.argmin(np.abs(wl - 840)))

    def ndvi(cube):
        return (cube[nir] - cube[red]) / (cube[nir] + cube[red])

    hsi_ndvi, fused_ndvi, limit = ndvi(hsi), ndvi(fused), 0.95 * np.nanmax(hsi)
    zc, zr, zw, zh = ZOOM
    best, best_gap = None, -1.0
    for r in range(zr + 20, zr + zh - 20):
        for c in range(zc + 20, zc + zw - 20):
            x, y = fused_transform * (c + 0.5, r + 0.5)
            hcf, hrf = (~hsi_transform) * (x, y)
            hc, hr = int(hcf), int(hrf)
            inside = 0.25 < hcf - hc < 0.75 and 0.25 < hrf - hr < 0.75  # well inside, so the marks read clearly
            if not (inside and fused_ndvi[r, c] > 0.6 and hsi_ndvi[hr, hc] < 0.3 and np.nanmax(fused[:, r, c]) < limit):
                continue
            gap = float(fused[nir, r, c])
            if gap > best_gap:
                best, best_gap = (r, c, hr, hc, x, y), gap
    if best is None:
        raise SystemExit("no vegetated pixel inside a built-up 30 m pixel in the zoom; move ZOOM")
    r, c, hr, hc, x, y = best
    left, top = hsi_transform * (hc, hr)
    right, bottom = hsi_transform * (hc + 1, hr + 1)
    footprint = from_bounds(left, bottom, right, top, transform=fused_transform).round_offsets().round_lengths()
    fr0, fc0 = max(int(footprint.row_off), 0), max(int(footprint.col_off), 0)
    fused_mean = np.nanmean(fused[:, fr0:fr0 + int(footprint.height), fc0:fc0 + int(footprint.width)], axis=(1, 2))

    fig, axes = plt.subplots(2, 3, figsize=(13, 9.2))
    zoom_extent = (*(fused_transform * (zc, 0))[:1], *(fused_transform * (zc + zw, 0))[:1],
                   (fused_transform * (0, zr + zh))[1], (fused_transform * (0, zr))[1])
    panels = [
        (axes[0, 0], stretch(hsi[idx], low, high), hsi_extent, "LR-HSI (EnMAP-simulated), 30 m, 177 bands"),
        (axes[0, 1], stretch(fused[idx], low, high), fused_extent, "fused HR-HSI, 3.6 m, 177 bands"),
        (axes[0, 2], stretch(msi[msi_rgb], np.nanpercentile(msi[msi_rgb], 2, axis=(1, 2)),
                             np.nanpercentile(msi[msi_rgb], 98, axis=(1, 2))), fused_extent,
         "HR-MSI input (HyMap), 3.6 m, 4 bands"),
        (axes[1, 0], stretch(hsi[idx], low, high), hsi_extent, "LR-HSI, zoom"),
        (axes[1, 1], stretch(fused[idx], low, high), fused_extent, "fused, zoom"),
    ]
    for k, (ax, image, extent, title) in enumerate(panels):
        ax.imshow(image, extent=extent, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if k < 3:
            ax.set_xlim(fused_extent[:2])
            ax.set_ylim(fused_extent[2:])
            ax.add_patch(Rectangle((zoom_extent[0], zoom_extent[2]), zoom_extent[1] - zoom_extent[0],
                                   zoom_extent[3] - zoom_extent[2], fill=False, color="yellow", lw=1.2))
        else:
            ax.set_xlim(zoom_extent[:2])
            ax.set_ylim(zoom_extent[2:])
            ax.add_patch(Rectangle((left, bottom), right - left, top - bottom, fill=False, color="cyan", lw=1.2))
            ax.add_patch(Circle((x, y), 6, fill=False, color="magenta", lw=1.5))

    ax = axes[1, 2]
    ax.plot(wl, hsi[:, hr, hc], color="tab:blue", lw=1.5, label="LR-HSI pixel (30 m, cyan square)")
    ax.plot(wl, fused[:, r, c], color="magenta", lw=1.5, label="fused pixel (3.6 m, magenta circle)")
    ax.plot(wl, fused_mean, color="black", lw=1, ls="--", label="fused, mean over the 30 m pixel")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("reflectance")
    ax.set_title("one pixel's spectrum", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    steps = report.get("options", {}).get("steps") or args.steps
    fig.suptitle(f"geolift fuse on the Berlin sample pair (SpectraLift, {steps} steps): true colour "
                 f"{', '.join(f'{wl[b - 1]:.0f}' for b in rgb_bands)} nm, same stretch for LR-HSI and fused",
                 fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}; pixel row {r} col {c} of the fused grid (LR-HSI row {hr} col {hc}); "
          f"SRF consistency RMSE {report.get('srf_consistency_rmse', float('nan')):.1f} "
          f"({100 * report.get('srf_consistency_relative', float('nan')):.2f} % of the HR-MSI mean), "
          f"shift {report.get('shift_px')} HSI px, trained {report.get('train_seconds', float('nan')):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
