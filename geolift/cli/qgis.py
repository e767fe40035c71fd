"""``geolift qgis install|uninstall``: put the Processing plugin into a QGIS profile or take it out."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from geolift.cli import app, run_command

qgis_app = typer.Typer(
    name="qgis",
    help="Add geolift to QGIS's Processing Toolbox (algorithm geolift:fuse), or remove it.",
    no_args_is_help=True,
    add_completion=False,
)

ProfileDir = Annotated[Optional[Path], typer.Option(
    "--profile-dir",
    help="QGIS profile folder (the one holding python/plugins and QGIS/QGIS3.ini); default: the profile QGIS opens "
         "by default.",
)]


@qgis_app.command("install")
def install(
    profile_dir: ProfileDir = None,
) -> None:
    """Install and enable the plugin; it will run this Python environment's geolift."""

    def action() -> None:
        from geolift.qgis_install import install_plugin

        folder = install_plugin(profile_dir)
        typer.echo(f"geolift: installed the QGIS plugin in {folder} and enabled it.", err=True)
        typer.echo(
            "geolift: restart QGIS; the algorithm is Processing Toolbox > geolift > "
            "Fuse hyperspectral and multispectral.",
            err=True,
        )

    run_command(action)


@qgis_app.command("uninstall")
def uninstall(
    profile_dir: ProfileDir = None,
) -> None:
    """Remove the plugin from the profile."""

    def action() -> None:
        from geolift.qgis_install import default_profile_dir, uninstall_plugin

        removed = uninstall_plugin(profile_dir)
        if removed is None:
            where = profile_dir if profile_dir is not None else default_profile_dir()
            typer.echo(f"geolift: the QGIS plugin was not installed in {where}; nothing to remove.", err=True)
        else:
            typer.echo(f"geolift: removed the QGIS plugin from {removed}.", err=True)

    run_command(action)


app.add_typer(qgis_app, name="qgis")
