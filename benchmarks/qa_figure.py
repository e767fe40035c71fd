"""The reliability layer of the Berlin sample, drawn for docs/user-guide.md (docs/img/berlin_qa.png).

Fuses the bundled Berlin pair with ``geolift fuse --qa`` (default preset and schedule) and draws the HR-MSI next to
the QA bands, printing their percentiles. Needs matplotlib (``pip install -e ".[plot]"``).

    python benchmarks/qa_figure.py [--steps 2500] [--out docs/img/berlin_qa.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "berlin_qa.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(tempfile.mkdtemp(prefix="geolift-qa-"))
    fused, qa_path = folder / "fused.tif", folder / "qa.tif"
    subprocess.run([sys.executable, "-m", "geolift", "fuse", str(SAMPLE / "enmap_sim_berlin_30m_177b.tif"),
                    str(SAMPLE / "hymap_berlin_3p6m_4b.tif"), "-o", str(fused), "--qa", str(qa_path), "--steps",
                    str(args.steps), "--progress", "none", "-q"], check=True)
    with rasterio.open(qa_path) as ds:
        layers, names = ds.read(), ds.descriptions
    with rasterio.open(SAMPLE / "hymap_berlin_3p6m_4b.tif") as ds:
        window = rasterio.windows.from_bounds(*rasterio.open(qa_path).bounds, transform=ds.transform)
        msi = ds.read([3, 2, 1], window=window.round_offsets().round_lengths(), masked=True)
        msi = msi.astype(np.float32).filled(np.nan)
    low, high = np.nanpercentile(msi, 2, axis=(1, 2)), np.nanpercentile(msi, 98, axis=(1, 2))
    rgb = np.clip((msi - low[:, None, None]) / (high - low)[:, None, None], 0, 1).transpose(1, 2, 0)

    for name, layer in zip(names, layers):
        values = layer[np.isfinite(layer)]
        print(f"{name:<14} p5 {np.percentile(values, 5):7.3f}  median {np.median(values):7.3f}  "
              f"p95 {np.percentile(values, 95):7.3f}  p99 {np.percentile(values, 99):7.3f}")
    fig, axes = plt.subplots(1, 5, figsize=(19, 4.6))
    axes[0].imshow(rgb)
    axes[0].set_title("HR-MSI (HyMap), 3.6 m", fontsize=10)
    scales = {"srf_residual": (0, 0.1, "viridis"), "lr_correction": (0, 0.5, "viridis"), "novelty": (0, 5, "magma"),
              "nodata_reason": (0, 2, "gray")}
    for ax, name, layer in zip(axes[1:], names, layers):
        vmin, vmax, cmap = scales[name]
        shown = ax.imshow(layer, vmin=vmin, vmax=vmax, cmap=cmap)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name, fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
