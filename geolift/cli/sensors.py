"""``geolift sensors``: what the bundled SRF library holds."""

from __future__ import annotations

from typing import Optional

import typer

from geolift.cli import app, run_command


@app.command("sensors")
def sensors(
    sensor: Optional[str] = typer.Argument(None, help="A sensor name: list its bands."),
    names: bool = typer.Option(False, "--names", help="Only the sensor names, one per line (for scripts)."),
) -> None:
    """List the bundled sensors, or one sensor's bands with centroid and FWHM."""
    from geolift import srf

    def action():
        if sensor is None:
            for name in srf.sensors():
                if names:
                    typer.echo(name)
                else:
                    info = srf.sensor_info(name)
                    typer.echo(f"{name:<14} {info['display_name']:<28} bands: {' '.join(srf.bands(name))}")
            return
        rows = srf.describe_sensor(sensor)
        typer.echo(f"{srf.sensor_info(sensor)['display_name']}:")
        for row in rows:
            typer.echo(
                f"  {row['band']:<6} {row.get('long_name', ''):<20} centroid {row['centroid_nm']:7.1f} nm"
                f"   FWHM {row['fwhm_nm']:6.1f} nm"
            )

    run_command(action)
