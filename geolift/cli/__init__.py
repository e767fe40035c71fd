"""The ``geolift`` command line: a thin typer layer over the library.

One module per command (``fuse``, ``sensors``, ``batch``, ``qgis``), as rasterio does
with ``rio/``. Every command runs inside :func:`run_command`, which turns a
:class:`~geolift.errors.GeoliftError` into one line on stderr and a non-zero exit
code, so users never see a traceback for a mistake of theirs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from geolift.errors import GeoliftError, log_warnings

app = typer.Typer(
    name="geolift",
    help="Fuse a low-resolution hyperspectral scene with a high-resolution multispectral scene "
    "(SpectraLift) into a high-resolution hyperspectral GeoTIFF.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

#: Exit codes the CLI adds to those of the error classes (geolift.errors): Ctrl-C, and memory ran out.
EXIT_INTERRUPTED = 130
EXIT_OUT_OF_MEMORY = 137

log = logging.getLogger("geolift")


def fail(message: str, exit_code: int = 1) -> typer.Exit:
    """Print one clear sentence on stderr and return the Exit to raise."""
    typer.echo(f"geolift: error: {message}", err=True)
    return typer.Exit(code=exit_code)


def run_command(action: Callable[[], T], interrupted: str = "interrupted; no output was written.") -> T:
    """Run ``action``; map geolift errors, Ctrl-C (``interrupted`` says what was kept) and memory to clean exits."""
    try:
        return action()
    except GeoliftError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail(interrupted, EXIT_INTERRUPTED) from None
    except MemoryError:
        raise fail("out of memory; try a smaller --tile-size or fewer --threads.", EXIT_OUT_OF_MEMORY) from None


class LineFormatter(logging.Formatter):
    """``geolift: <message>``, and ``geolift: warning: <message>`` for warnings, as errors are ``geolift: error:``."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "geolift: warning: " if logging.WARNING <= record.levelno < logging.ERROR else "geolift: "
        return prefix + record.getMessage()


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    """Route the library's log records and warnings to stderr, one line each, at a level the flags ask for."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    log_warnings()


def _version_callback(value: bool) -> None:
    if value:
        from geolift import __version__

        typer.echo(f"geolift {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """geolift command line."""


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from geolift.cli import commands  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    app()
