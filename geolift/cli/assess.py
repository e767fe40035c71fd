"""``geolift assess``: the quality to expect on a pair, measured on the pair itself (see ``geolift.assess``)."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from geolift.cli import app, run_command, setup_logging
from geolift.cli.options import DisplayChoices, PairChoices, with_options


@app.command("assess")
@with_options(pair=PairChoices, display=DisplayChoices)
def assess(
    hsi: Annotated[Path, typer.Argument(help="Low-resolution hyperspectral scene, as for geolift fuse.")],
    msi: Annotated[list[Path], typer.Argument(help="High-resolution multispectral scene, as for geolift fuse.")],
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write the figures as JSON to this file.")] = None,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Also draw an error map and spectra into this PNG (needs matplotlib).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch threads (default 1).")] = None,
    *,
    pair: PairChoices,
    display: DisplayChoices,
) -> None:
    """Fuse the pair degraded by its own ratio (Wald's protocol at reduced scale) and compare with the real HSI:
    geolift's default, the faithful SpectraLift preset and bicubic, for all bands and VNIR/SWIR apart.

    It tells what quality to expect before fusing a whole archive; nothing is written unless asked.
    """
    setup_logging(display.quiet)

    def action():
        from geolift.assess import assess as run_assess
        from geolift.assess import write_figure
        from geolift.errors import OutputError
        from geolift.io import check_output_path

        for path in (report, png):
            if path is not None:
                check_output_path(path, overwrite=True, inputs=[hsi, *msi])
        options = pair.fuse_options(torch_threads=threads or 1)
        result, arrays = run_assess(hsi, msi[0] if len(msi) == 1 else list(msi), options)
        typer.echo(f"Reduced scale: the HSI ({result.truth_shape[0]} x {result.truth_shape[1]} px) degraded by "
                   f"{result.factor} to {result.reduced_shape[0]} x {result.reduced_shape[1]} px; PSNR in dB, SAM "
                   "in degrees.")
        typer.echo(result.table())
        try:
            if report is not None:
                report.write_text(json.dumps(result.to_dict(), indent=2, default=str))
            if png is not None:
                write_figure(arrays, result, png)
        except OSError as exc:
            raise OutputError(f"Cannot write {exc.filename} ({exc.strerror or exc}).") from None
        return result

    run_command(action)
