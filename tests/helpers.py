"""Helpers the tests share (imported as ``from helpers import ...``; fixtures live in conftest.py).

Real files only: :func:`write_tif` writes GeoTIFFs through rasterio, :func:`read_potsdam_cube` reads the bundled
EnMAP cube, :data:`BerlinPair` names the bundled Berlin pair.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
POTSDAM_CUBE = SAMPLE / "enmap_l2a_potsdam_mosaic_128x64_224b.tif"
WALD_BANDS = ("B2", "B3", "B4", "B8")
WALD_RATIO = 4

#: ``--members 1`` for tests whose claim is about files, products, batch, STAC or the pipeline, not the recipe: one
#: network is all they need, and the default preset's three members and student would make them slower and test
#: nothing more. The default's ensemble is tested in test_model.py, and every entry point's parity with the
#: library's default in test_cli.py, test_fuse.py, test_xarray.py and test_batch.py.
ONE_NETWORK = ("--members", "1")


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: CRS | str | None,
    transform: Affine | None,
    wavelengths: Sequence[float] | None = None,
    fwhm: Sequence[float] | None = None,
    descriptions: Sequence[str] | None = None,
    nodata: float | None = None,
    tags: dict | None = None,
) -> Path:
    """Write a ``(bands, rows, cols)`` array as a GeoTIFF with optional wavelength tags and band descriptions.

    ``crs=None``/``transform=None`` writes a file without georeferencing (for the error tests).
    """
    data = np.asarray(data)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            for i in range(data.shape[0]):
                band_tags = {}
                if wavelengths is not None:
                    band_tags.update(wavelength=repr(float(wavelengths[i])), wavelength_units="Nanometers")
                if fwhm is not None:
                    band_tags["fwhm"] = repr(float(fwhm[i]))
                if band_tags:
                    ds.update_tags(i + 1, **band_tags)
                if descriptions is not None:
                    ds.set_band_description(i + 1, descriptions[i])
            if tags:
                ds.update_tags(**tags)
    return Path(path)


@dataclass(frozen=True)
class BerlinPair:
    """The real Berlin sample pair: EnMAP-simulated 30 m (177 bands) and HyMap 3.6 m (4 bands)."""

    hsi_tif: Path = SAMPLE / "enmap_sim_berlin_30m_177b.tif"
    msi_tif: Path = SAMPLE / "hymap_berlin_3p6m_4b.tif"
    hsi_envi: Path = SAMPLE / "EnMAP_BerlinUrbanGradient.bsq"
    hsi_envi_hdr: Path = SAMPLE / "EnMAP_BerlinUrbanGradient.hdr"
    msi_envi: Path = SAMPLE / "HighResolution_BerlinUrbanGradient.bsq"
    msi_envi_hdr: Path = SAMPLE / "HighResolution_BerlinUrbanGradient.hdr"


def read_potsdam_cube() -> tuple[np.ndarray, np.ndarray, np.ndarray, CRS, Affine]:
    """The Potsdam cube's good bands sorted by wavelength, with band centres/FWHM (nm), CRS and transform.

    EnMAP's VNIR and SWIR detectors overlap (902-993 nm), so file order is not wavelength order; the Wald files are
    written sorted, as benchmarks/potsdam_wald.py does (no metric depends on band order). The unsorted original is
    tested as such in test_fuse.py.
    """
    with rasterio.open(POTSDAM_CUBE) as ds:
        cube = ds.read().astype(np.float32)
        band_tags = [ds.tags(i + 1) for i in range(ds.count)]
        nodata, crs, transform = ds.nodata, ds.crs, ds.transform
    cube[cube == nodata] = np.nan
    good = np.array([t.get("bbl", "1") != "0" for t in band_tags])
    wavelengths = np.array([float(t["wavelength"]) for t in band_tags])
    fwhm = np.array([float(t["fwhm"]) for t in band_tags])
    order = np.flatnonzero(good)[np.argsort(wavelengths[good], kind="stable")]
    return cube[order], wavelengths[order], fwhm[order], crs, transform


@dataclass(frozen=True)
class WaldFiles:
    """A Wald-protocol case in memory and on disk (float32 GeoTIFFs, values in [0, 1])."""

    hsi: Path  # LR-HSI, 4x coarser geotransform than the HR grid, same origin, wavelength/FWHM tags
    msi: Path  # HR-MSI, band descriptions B2, B3, B4, B8
    gt: np.ndarray  # (218, 64, 128) ground truth on the HR grid
    lr_hsi: np.ndarray  # (218, 16, 32)
    hr_msi: np.ndarray  # (4, 64, 128)
    R: np.ndarray  # (4, 218)
    wavelengths: np.ndarray
    fwhm: np.ndarray
    crs: CRS
    hr_transform: Affine
    lr_transform: Affine
    bands: tuple[str, ...] = WALD_BANDS
    ratio: int = WALD_RATIO


def temp_leftovers(folder: Path) -> list[Path]:
    """Temporary files geolift would leave behind after a failed write (``.<name>.geolift-tmp-*``), and the
    consistency step's scratch folders (``.<name>.geolift-scratch-*``)."""
    return sorted(Path(folder).glob(".*geolift-tmp-*")) + sorted(Path(folder).glob(".geolift-probe-*")) + \
        sorted(Path(folder).glob(".*geolift-scratch-*"))


def box_response(n_msi: int, n_hsi: int) -> np.ndarray:
    """m x C response with contiguous, equal-width box rows summing to 1 (no SRF library needed)."""
    R = np.zeros((n_msi, n_hsi))
    for i, part in enumerate(np.array_split(np.arange(n_hsi), n_msi)):
        R[i, part] = 1.0 / len(part)
    return R


def run_fuse(args: Sequence, tmp_path: Path, label: str, steps: int = 60):
    """``geolift fuse ARGS`` through typer's runner, writing ``<label>.tif`` and ``<label>.json`` in ``tmp_path``:
    (result, output path, report or None when it failed)."""
    from typer.testing import CliRunner

    from geolift.cli import _register_commands, app

    _register_commands()
    out = tmp_path / f"{label}.tif"
    result = CliRunner().invoke(app, ["fuse", *map(str, args), "--steps", str(steps), *ONE_NETWORK, "-o", str(out),
                                      "--progress", "none", "--report", str(tmp_path / f"{label}.json")])
    report = json.loads((tmp_path / f"{label}.json").read_text()) if result.exit_code == 0 else None
    return result, out, report


@dataclass
class CliRun:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: Sequence) -> CliRun:
    """``geolift ARGS`` in-process through typer's runner, with stdout and stderr apart; the geolift logger's
    handlers are put back afterwards (the command points them at the runner's streams)."""
    import logging

    from typer.testing import CliRunner

    from geolift.cli import _register_commands, app

    _register_commands()
    logger = logging.getLogger("geolift")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unexpected exception is a bug: show it
    return CliRun(result.exit_code, result.stdout, result.stderr)


@contextlib.contextmanager
def geolift_log():
    """The geolift logger's messages (a CLI test before may have stopped it propagating to caplog)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("geolift")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
