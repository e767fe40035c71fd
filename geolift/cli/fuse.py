"""``geolift fuse``: two scenes in, one HR-HSI GeoTIFF out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from geolift.cli.choices import Compression, OutputType, ProgressMode
from geolift.cli import app, run_command, setup_logging
from geolift.cli.progress import progress_reporter


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _split_bands(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if not text:
        return None
    names = tuple(b for b in (part.strip() for part in text.replace(";", ",").split(",")) if b)
    return names or None


@app.command("fuse")
def fuse(
    hsi: Path = typer.Argument(..., help="Low-resolution hyperspectral scene (GeoTIFF or ENVI, with wavelengths)."),
    msi: List[Path] = typer.Argument(
        ..., help="High-resolution multispectral scene: one multi-band raster, or several single-band files."
    ),
    sensor: Optional[str] = typer.Option(
        None, "--sensor", "-s", help="MSI sensor from the SRF library (see `geolift sensors`), e.g. sentinel2."
    ),
    bands: Optional[str] = typer.Option(
        None, "--bands", "-b", help="Sensor bands the MSI holds, in order, e.g. B2,B3,B4,B8."
    ),
    srf_csv: Optional[Path] = typer.Option(
        None, "--srf", help="Custom SRF CSV (wavelength_nm, then one column per band) instead of --sensor."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="Output GeoTIFF. Default: <HSI name>_fused.tif in the current folder. Inputs are never overwritten.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    drop_uncovered: bool = typer.Option(
        False, "--drop-uncovered", help="Leave out MSI bands the HSI's spectral range does not cover (else an error)."
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset",
        help="Recipe. geolift (default): SpectraLift trained on a stratified pixel sample, then made consistent "
             "with the LR-HSI using a blur estimated from the data. spectralift: the paper's settings, faithful "
             "(full-batch training, the network's output as is).",
    ),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: the preset's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same result."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not estimate and correct the residual shift."),
    harmonize: bool = typer.Option(
        False, "--harmonize", help="Map the MSI to the HSI's radiometry (per-band gain/offset) before inference."
    ),
    dtype: Optional[OutputType] = typer.Option(
        None, "--dtype", help="Output data type (default: int16 in the HSI's units for integer HSIs, else float32)."
    ),
    compress: Compression = typer.Option(Compression.deflate, "--compress", help="GeoTIFF compression."),
    tile_size: int = typer.Option(512, "--tile-size", help="Internal GeoTIFF tile size (multiple of 16)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1,
        help="Threads for torch (training, inference) and GeoTIFF compression. Default: compression on every "
             "usable core, torch on 1 thread (on a shared or busy machine more torch threads were far slower).",
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write what was done as JSON to this file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print warnings and errors."),
    progress: ProgressMode = typer.Option(
        ProgressMode.bar, "--progress", help="bar (terminal), plain (lines for programs) or none."
    ),
) -> None:
    """Fuse an LR-HSI with an HR-MSI into a tiled, georeferenced HR-HSI GeoTIFF.

    Without -o the result is written to <HSI name>_fused.tif in the current folder.
    """
    setup_logging(quiet)

    def action():
        from geolift.fuse import FuseOptions, fuse_files

        options = FuseOptions(
            sensor=sensor, bands=_split_bands(bands), srf_path=str(srf_csv) if srf_csv else None,
            drop_uncovered=drop_uncovered, steps=steps, seed=seed, device=device,
            align=not no_align, harmonize=harmonize, dtype=dtype.value if dtype else None,
            compress=compress.value, tile_size=tile_size, overwrite=overwrite,
            num_threads=threads or usable_cores(), torch_threads=threads or 1,
            **({"preset": preset} if preset else {}),  # none given: the model's default preset (geolift)
        )
        msi_source = msi[0] if len(msi) == 1 else list(msi)
        mode = "none" if quiet and progress is ProgressMode.bar else progress.value
        with progress_reporter(mode) as callback:
            result = fuse_files(hsi, msi_source, output, options, progress=callback)
        if report is not None:
            report.write_text(json.dumps(result.to_dict(), indent=2, default=str))
        if not quiet:
            typer.echo(
                f"Wrote {result.output}: {result.output_size[0]} x {result.output_size[1]} px, "
                f"{result.hsi_bands} bands; SRF consistency RMSE vs the HR-MSI "
                f"{result.srf_consistency_rmse:.4g} ({100 * result.srf_consistency_relative:.2f} % of its mean)."
            )
        return result

    run_command(action)
