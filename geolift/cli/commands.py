"""Import every command module so each registers itself on the typer app."""

import importlib

for _name in ("sensors", "fuse", "batch", "qgis"):
    try:
        importlib.import_module(f"geolift.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command still being written is simply absent
        if exc.name != f"geolift.cli.{_name}":
            raise
