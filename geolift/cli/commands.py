"""Import every command module so each registers itself on the typer app."""

from geolift.cli import assess, batch, fuse, info, qgis, sensors  # noqa: F401
