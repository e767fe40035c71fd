"""Options shared by several commands, declared once (as rasterio's ``rio/options.py`` does for click).

``geolift fuse``, ``geolift batch`` and ``geolift assess`` share groups of options: :func:`with_options` adds a group
to a command, which receives what the user chose as one object per group (:class:`PairChoices`,
:class:`OutputChoices`, :class:`DisplayChoices`), and :meth:`PairChoices.fuse_options` is the one place that turns
the choices into :class:`geolift.fuse.FuseOptions`. The commands therefore cannot drift apart (a band list is
parsed by :func:`geolift.srf.parse_band_list` in all of them, for instance).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from geolift.cli.choices import Compression, OutputType, Overlap, ProgressMode

if TYPE_CHECKING:
    from geolift.fuse import FuseOptions

__all__ = ["DisplayChoices", "OutputChoices", "PairChoices", "with_options"]

_PRESET_HELP = (
    "Recipe. geolift (default): SpectraLift trained on a stratified pixel sample, then made consistent with the "
    "LR-HSI using a blur estimated from the data. spectralift: the paper's settings, faithful (full-batch "
    "training, the network's output as is)."
)


@dataclass(frozen=True)
class PairChoices:
    """What the user chose about the pair and the training: every command that fuses (fuse, batch, assess)."""

    sensor: Annotated[Optional[str], typer.Option(
        "--sensor", "-s", help="MSI sensor from the SRF library (see `geolift sensors`), e.g. sentinel2.")] = None
    bands: Annotated[Optional[str], typer.Option(
        "--bands", "-b", help="Sensor bands the MSI holds, in order: B2,B3,B4,B8 or \"B2 B3 B4 B8\".")] = None
    srf_csv: Annotated[Optional[Path], typer.Option(
        "--srf", help="Custom SRF CSV (wavelength_nm, then one column per band) instead of --sensor.")] = None
    drop_uncovered: Annotated[bool, typer.Option(
        "--drop-uncovered",
        help="Leave out MSI bands the HSI's spectral range does not cover (else an error).")] = False
    resolution: Annotated[Optional[float], typer.Option(
        "--resolution", min=0.001,
        help="The MSI grid's pixel size, in its CRS units (e.g. 20 for Sentinel-2's 20 m grid; finer bands are "
        "averaged onto it). Default: the MSI's finest band.")] = None
    overlap: Annotated[Overlap, typer.Option(
        "--overlap", help="Where an HSI product's VNIR and SWIR detectors overlap (EnMAP, PRISMA): keep both "
        "detectors' bands, or only vnir's or swir's there.")] = Overlap.keep
    steps: Annotated[Optional[int], typer.Option(
        "--steps", min=1, help="Training steps (default: the preset's).")] = None
    members: Annotated[Optional[int], typer.Option(
        "--members", min=1,
        help="Networks trained side by side (default: the preset's, 3 for the default recipe). With 2 or more "
        "the recipe then trains one network on their mean, so predicting costs one network; --members 1 trains "
        "one network, in about a third of the training time, and is less sharp.")] = None
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")] = 0
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu"
    no_align: Annotated[bool, typer.Option(
        "--no-align", help="Do not estimate and correct the residual shift.")] = False
    harmonize: Annotated[bool, typer.Option(
        "--harmonize", help="Map the MSI to the HSI's radiometry (per-band gain/offset) before inference.")] = False

    def fuse_options(self, output: OutputChoices | None = None, **runtime: Any) -> FuseOptions:
        """The library's options for these choices (and ``output``'s); ``runtime`` adds what only one command
        sets (threads...). The one place the command line becomes :class:`geolift.fuse.FuseOptions`."""
        from geolift import srf
        from geolift.fuse import FuseOptions

        output = output or OutputChoices()
        return FuseOptions(
            sensor=self.sensor, bands=srf.parse_band_list(self.bands),
            srf_path=str(self.srf_csv) if self.srf_csv else None, drop_uncovered=self.drop_uncovered,
            overlap=self.overlap.value, resolution=self.resolution,
            steps=self.steps, members=self.members, seed=self.seed, device=self.device, align=not self.no_align,
            harmonize=self.harmonize,
            dtype=output.dtype.value if output.dtype else None, compress=output.compress.value,
            tile_size=output.tile_size, strict=output.strict, cog=output.cog,
            creation_options=tuple(output.co or ()),
            **({"preset": output.preset} if output.preset else {}),  # none given: the model's default (geolift)
            **runtime,
        )


@dataclass(frozen=True)
class OutputChoices:
    """What the user chose about the fused output: the recipe and how the GeoTIFF is stored (fuse, batch)."""

    preset: Annotated[Optional[str], typer.Option("--preset", help=_PRESET_HELP)] = None
    dtype: Annotated[Optional[OutputType], typer.Option(
        "--dtype", help="Output data type (default: int16 in the HSI's units for integer HSIs, else float32).")] = None
    compress: Annotated[Compression, typer.Option("--compress", help="GeoTIFF compression.")] = Compression.deflate
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a pair that looks inconsistent (band order, units, clouds...; exit code 8) "
        "instead of warning.")] = False
    tile_size: Annotated[int, typer.Option(
        "--tile-size", help="Internal GeoTIFF tile size (multiple of 16); smaller tiles need less memory.")] = 512
    cog: Annotated[bool, typer.Option(
        "--cog", help="Write a Cloud-Optimized GeoTIFF (internal overviews, COG layout), via GDAL's COG driver "
        "once all tiles are written.")] = False
    co: Annotated[Optional[list[str]], typer.Option(
        "--co", metavar="NAME=VALUE", help="GDAL creation option (repeatable), e.g. --co COMPRESS=ZSTD --co "
        "ZSTD_LEVEL=9; checked against GDAL's GTiff driver (COG driver with --cog), wins over geolift's own. The "
        "tile size stays --tile-size.")] = None


@dataclass(frozen=True)
class DisplayChoices:
    """How a long-running command talks while it works."""

    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print warnings, errors and the result.")] = False
    progress: Annotated[ProgressMode, typer.Option(
        "--progress", help="bar (terminal), plain (lines for programs, such as the QGIS plugin) or none.",
    )] = ProgressMode.bar

    @property
    def progress_mode(self) -> str:
        """``--quiet`` silences the bars, but not plain progress lines a program asked for."""
        return "none" if self.quiet and self.progress is ProgressMode.bar else self.progress.value


def with_options(**groups: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options of each group (a dataclass such as :class:`PairChoices`) to a typer command; the command
    receives each group as one keyword argument, named as in ``groups``.

    typer reads a command's options from its signature, so the wrapper's signature is the command's own parameters
    (less the groups) followed by one keyword parameter per field of each group.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in groups]
        added, members = [], {}
        for group, cls in groups.items():
            hints = inspect.get_annotations(cls, eval_str=True)
            members[group] = [f.name for f in fields(cls)]
            added += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=hints[f.name]) for f in fields(cls)]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for group, cls in groups.items():
                kwargs[group] = cls(**{name: kwargs.pop(name) for name in members[group]})
            return command(**kwargs)

        del wrapper.__wrapped__  # typer must see the wrapper's signature, not the command's
        wrapper.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *added)}
        return wrapper

    return decorate
