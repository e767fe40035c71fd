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
    stac: Annotated[Optional[Path], typer.Option(
        "--stac", metavar="ITEM.json", help="Also write a STAC Item (STAC 1.0, eo, raster and projection "
        "extensions) describing the output, with links to the inputs.")] = None,
    stac_datetime: Annotated[Optional[str], typer.Option(
        "--stac-datetime", metavar="TIME", help="The acquisition time for the STAC Item when the inputs do not "
        "say it (ISO 8601: 2009-08-20, 2009-08-20T10:31:00Z, or START/END); it wins over theirs.")] = None,
    scratch: Annotated[str, typer.Option(
        "--scratch", metavar="auto|none|FOLDER", help="Where the consistency step keeps the network's output between "
        "its two passes, so that it predicts every pixel once (float32: 4 bytes x bands x pixels, deleted at the "
        "end): auto, a hidden folder beside the output when the disk has room for it; a folder; or none, predict "
        "twice.")] = "auto",
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
        from geolift.errors import InputError, OutputError
        from geolift.fuse import default_output_path, fuse_files, usable_cores
        from geolift.io import check_output_path

        if report is not None and not report.expanduser().absolute().parent.is_dir():
            raise OutputError(f"The folder of the report {report} does not exist.")
        options = pair.fuse_options(output_choices, overwrite=overwrite, num_threads=threads or usable_cores(),
                                      torch_threads=threads or 1, scratch=scratch)
        msi_source = msi[0] if len(msi) == 1 else list(msi)
        if stac_datetime is not None and stac is None:
            raise InputError("--stac-datetime sets the time in the STAC Item; add --stac ITEM.json.")
        if stac is not None:
            from geolift.stac import parse_datetime_option

            if stac_datetime is not None:
                parse_datetime_option(stac_datetime)
            out_path = output if output is not None else default_output_path(hsi)
            others = [p for p in (out_path, qa, report) if p is not None]
            check_output_path(stac, overwrite=overwrite, inputs=[hsi, *msi, *others])
        with progress_reporter(display.progress_mode) as callback:
            result = fuse_files(hsi, msi_source, output, options, progress=callback, qa=qa)
        if stac is not None:
            from geolift.stac import write_item

            write_item(result.output, stac, datetime=stac_datetime, qa=qa)
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
            if stac is not None:
                typer.echo(f"Wrote the STAC Item {stac}.")
        return result

    run_command(action)
