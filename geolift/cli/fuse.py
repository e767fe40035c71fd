"""``geolift fuse``: two scenes in, one HR-HSI GeoTIFF out."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from geolift.cli import app, run_command, setup_logging
from geolift.cli.options import DisplayChoices, OutputChoices, PairChoices, with_options
from geolift.cli.progress import progress_reporter


@app.command("fuse")
@with_options(pair=PairChoices, output_choices=OutputChoices, display=DisplayChoices)
def fuse(
    hsi: Annotated[Path, typer.Argument(
        help="Low-resolution hyperspectral scene (GeoTIFF or ENVI, with wavelengths).")],
    msi: Annotated[list[Path], typer.Argument(
        help="High-resolution multispectral scene: one multi-band raster, or several single-band files.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o",
        help="Output GeoTIFF. Default: <HSI name>_fused.tif in the current folder. Inputs are never overwritten.",
    )] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1,
        help="Threads for torch (training, inference) and GeoTIFF compression. Default: compression on every "
             "usable core, torch on 1 thread (on a shared or busy machine more torch threads were far slower).",
    )] = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write what was done as JSON to this file.")] = None,
    qa: Annotated[Optional[Path], typer.Option(
        "--qa", help="Also write the reliability layer (per pixel: SRF residual, LR correction, novelty, nodata "
        "reason; docs/user-guide.md) as a GeoTIFF on the output grid.")] = None,
    *,
    pair: PairChoices,
    output_choices: OutputChoices,
    display: DisplayChoices,
) -> None:
    """Fuse an LR-HSI with an HR-MSI into a tiled, georeferenced HR-HSI GeoTIFF.

    Without -o the result is written to <HSI name>_fused.tif in the current folder.
    """
    setup_logging(display.quiet)

    def action():
        from geolift.errors import OutputError
        from geolift.fuse import fuse_files, usable_cores

        if report is not None and not report.expanduser().absolute().parent.is_dir():
            raise OutputError(f"The folder of the report {report} does not exist.")
        options = pair.fuse_options(output_choices, overwrite=overwrite, num_threads=threads or usable_cores(),
                                      torch_threads=threads or 1)
        msi_source = msi[0] if len(msi) == 1 else list(msi)
        with progress_reporter(display.progress_mode) as callback:
            result = fuse_files(hsi, msi_source, output, options, progress=callback, qa=qa)
        if report is not None:
            try:
                report.write_text(json.dumps(result.to_dict(), indent=2, default=str))
            except OSError as exc:
                raise OutputError(f"Wrote {result.output}, but cannot write the report {report} "
                                  f"({exc.strerror or exc}).") from None
        if not display.quiet:
            typer.echo(
                f"Wrote {result.output}: {result.output_size[0]} x {result.output_size[1]} px, "
                f"{result.hsi_bands} bands; SRF consistency RMSE vs the HR-MSI "
                f"{result.srf_consistency_rmse:.4g} ({100 * result.srf_consistency_relative:.2f} % of its mean)."
            )
        return result

    run_command(action)
