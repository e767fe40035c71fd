"""The ``geolift`` command line, as users run it: the Berlin pair, a Wald case, band files, and every bad input.

A few runs go through a real child process (``python -m geolift``) to prove that no traceback ever reaches the
user; the rest use typer's CliRunner in-process, which is faster. Training is short (100-300 steps) and on one
torch thread (see ``one_torch_thread`` in conftest.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import ONE_NETWORK
from rasterio.windows import Window
from typer.testing import CliRunner

import geolift
from geolift import evaluate, refine, srf
from geolift.cli import _register_commands, app
from geolift.errors import GeoliftError
from geolift.model import SpectraLift

REPO = Path(__file__).resolve().parents[1]
WALD_STEPS = 300
BERLIN_STEPS = 100

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


def run_geolift(args, *, cwd: Path | None = None, process: bool = False) -> Run:
    """Run ``geolift ARGS`` in a child process (``process=True``) or in-process with CliRunner, in ``cwd``."""
    args = [str(a) for a in args]
    if process:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-m", "geolift", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        return Run(done.returncode, done.stdout, done.stderr)
    _register_commands()
    logger = logging.getLogger("geolift")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    old_cwd = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(old_cwd)
        # the command points geolift's log handler at the runner's (now closed) stderr; put the old ones back
        logger.handlers[:], logger.level, logger.propagate = saved
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unexpected exception is a bug: show it
    return Run(result.exit_code, result.stdout, result.stderr)


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("geolift: error:")]


# ------------------------------------------------------------------------------------------------ bad inputs
@dataclass
class BadCase:
    args: list  # after "fuse"
    exit_code: int
    mentions: tuple[str, ...] = ()  # words the message must contain
    output: Path | None = None  # where an output would have gone (must not appear, or stay untouched)
    keep: bytes | None = None  # content of a pre-existing output that must survive


def _no_georeferencing(tmp, wald, write):
    hsi = write(tmp / "no_crs.tif", wald.lr_hsi.astype(np.float32), crs=None, transform=None,
                wavelengths=wald.wavelengths, fwhm=wald.fwhm)
    return BadCase([hsi, wald.msi, "--sensor", "sentinel2"], 2, ("no_crs.tif",))


def _no_wavelengths(tmp, wald, write):
    hsi = write(tmp / "no_wavelengths.tif", wald.lr_hsi.astype(np.float32), crs=wald.crs, transform=wald.lr_transform)
    return BadCase([hsi, wald.msi, "--sensor", "sentinel2"], 2, ("wavelength",))


def _not_a_raster(tmp, wald, write):
    text = tmp / "notes.tif"
    text.write_text("this is not a raster\n")
    return BadCase([text, wald.msi, "--sensor", "sentinel2"], 2, ("notes.tif",))


def _missing_file(tmp, wald, write):
    return BadCase([tmp / "nowhere.tif", wald.msi, "--sensor", "sentinel2"], 2, ("nowhere.tif", "not found"))


def _band_outside_hsi_range(tmp, wald, write):
    # The Berlin HSI starts at 460 nm; Sentinel-2 B1 (443 nm) is not covered.
    hsi, msi = REPO / "sample_data/enmap_sim_berlin_30m_177b.tif", REPO / "sample_data/hymap_berlin_3p6m_4b.tif"
    return BadCase([hsi, msi, "--sensor", "sentinel2", "--bands", "B1,B2,B3,B4"], 2, ("B1",))


def _no_overlap(tmp, wald, write):
    far = wald.lr_transform @ Affine.translation(1000, 0)  # 120 km east
    hsi = write(tmp / "far.tif", wald.lr_hsi.astype(np.float32), crs=wald.crs, transform=far,
                wavelengths=wald.wavelengths, fwhm=wald.fwhm)
    # the footprints are printed in plain metres (5807085), not as 5.80708e+06
    return BadCase([hsi, wald.msi, "--sensor", "sentinel2"], 3, ("overlap", "485055", "5807085"))


def _band_count_mismatch(tmp, wald, write):
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "--bands", "B2,B3,B4"], 2, ("4 band", "3"))


def _all_nodata(tmp, wald, write):
    empty = np.full(wald.lr_hsi.shape, -9999, np.int16)
    hsi = write(tmp / "empty.tif", empty, crs=wald.crs, transform=wald.lr_transform, wavelengths=wald.wavelengths,
                fwhm=wald.fwhm, nodata=-9999)
    return BadCase([hsi, wald.msi, "--sensor", "sentinel2"], 2, ("empty.tif", "no valid pixel"))


def _unknown_sensor(tmp, wald, write):
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel7"], 2, ("sentinel7",))


def _unknown_band(tmp, wald, write):
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "--bands", "B2,B3,B4,B99"], 2, ("B99",))


def _output_folder_missing(tmp, wald, write):
    out = tmp / "no_such_folder" / "fused.tif"
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "-o", out], 5, ("no_such_folder",), output=out)


def _output_exists(tmp, wald, write):
    out = tmp / "fused.tif"
    out.write_bytes(b"precious")
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "-o", out], 5, ("exists",), output=out,
                   keep=b"precious")


def _output_is_an_input(tmp, wald, write):
    hsi = tmp / "hsi.tif"
    hsi.write_bytes(wald.hsi.read_bytes())
    return BadCase([hsi, wald.msi, "--sensor", "sentinel2", "-o", hsi, "--overwrite"], 5, ("input",), output=hsi,
                   keep=hsi.read_bytes())


def _unnamed_bands(tmp, wald, write):
    # Really Sentinel-2 B2, B3, B4, but the file says nothing: GDAL's "band 1..3" must not be read as B1, B2, B3.
    msi = write(tmp / "three_bands.tif", wald.hr_msi[:3].astype(np.float32), crs=wald.crs, transform=wald.hr_transform)
    return BadCase([wald.hsi, msi, "--sensor", "sentinel2"], 2, ("three_bands.tif", "--bands", "B1, B2, B3"))


def _unknown_preset(tmp, wald, write):
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "--preset", "fastest"], 4, ("fastest", "preset"))


def _report_folder_missing(tmp, wald, write):
    out = tmp / "fused.tif"
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "-o", out, "--report", tmp / "nowhere" / "r.json"],
                   5, ("report", "nowhere"), output=out)


def _scratch_folder_missing(tmp, wald, write):
    out = tmp / "fused.tif"
    return BadCase([wald.hsi, wald.msi, "--sensor", "sentinel2", "-o", out, "--scratch", tmp / "no_scratch_here"],
                   5, ("scratch", "no_scratch_here"), output=out)


BAD_INPUTS = {
    "missing file": (_missing_file, True),
    "not a raster": (_not_a_raster, True),
    "no CRS": (_no_georeferencing, False),
    "no wavelengths": (_no_wavelengths, False),
    "MSI band outside the HSI range": (_band_outside_hsi_range, True),
    "no overlap": (_no_overlap, True),
    "band count mismatch": (_band_count_mismatch, False),
    "all nodata": (_all_nodata, False),
    "output folder missing": (_output_folder_missing, False),
    "output exists": (_output_exists, False),
    "output is an input": (_output_is_an_input, True),
    "unknown sensor": (_unknown_sensor, False),
    "unknown band": (_unknown_band, False),
    "unknown preset": (_unknown_preset, False),
    "MSI bands without names": (_unnamed_bands, False),
    "report folder missing": (_report_folder_missing, False),
    "scratch folder missing": (_scratch_folder_missing, False),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_and_no_output(name, wald, write_raster, leftovers, tmp_path):
    build, in_child_process = BAD_INPUTS[name]
    work = tmp_path / "work"  # the current folder: the default output would land here
    work.mkdir()
    case = build(tmp_path, wald, write_raster)
    files_before = sorted(p.name for p in tmp_path.iterdir())

    run = run_geolift(["fuse", *case.args, "--steps", "20", *ONE_NETWORK, "--progress", "none"], cwd=work,
                      process=in_child_process)

    assert run.exit_code == case.exit_code, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    errors = error_lines(run)
    assert len(errors) == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == errors[0]  # the error is the last thing said
    message = errors[0][len("geolift: error:"):].strip()
    assert message.endswith(".") and "\n" not in message
    for word in case.mentions:
        assert word.lower() in message.lower(), message
    # no output anywhere, no temporary file, an existing file untouched
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before
    assert leftovers(tmp_path) == [] and leftovers(work) == []
    if case.keep is not None:
        assert case.output.read_bytes() == case.keep
    elif case.output is not None:
        assert not case.output.exists()


# ------------------------------------------------------------------------------------------ the Berlin pair
@pytest.fixture(scope="module")
def berlin_run(berlin, tmp_path_factory):
    """The Berlin pair fused by the real command, as a user types it: no -o, so into the current folder."""
    cwd = tmp_path_factory.mktemp("berlin_cli")
    run = run_geolift(["fuse", berlin.hsi_tif, berlin.msi_tif, "--steps", BERLIN_STEPS, *ONE_NETWORK,
                       "--progress", "plain", "--report", "report.json", "--qa", "qa.tif"], cwd=cwd, process=True)
    return run, cwd


@pytest.mark.slow
def test_berlin_pair_fuses_onto_the_hymap_grid(berlin, berlin_run, leftovers):
    run, cwd = berlin_run
    assert run.exit_code == 0, run.stderr
    out = cwd / "enmap_sim_berlin_30m_177b_fused.tif"
    assert sorted(p.name for p in cwd.iterdir()) == sorted([out.name, "report.json", "qa.tif"])
    assert leftovers(cwd) == []
    report = json.loads((cwd / "report.json").read_text())
    col, row, width, height = report["msi_window"]
    with rasterio.open(berlin.msi_tif) as hymap, rasterio.open(berlin.hsi_tif) as enmap, rasterio.open(out) as ds:
        assert ds.crs == hymap.crs
        assert ds.transform == hymap.window_transform(Window(col, row, width, height))
        assert (ds.width, ds.height) == (width, height)
        assert width * height >= 0.95 * hymap.width * hymap.height  # the HSI covers nearly all of the HyMap scene
        assert ds.count == 177
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.compression.name.upper() == "DEFLATE"
        assert ds.dtypes[0] == "int16" and ds.nodata == -32768  # int16 HSI -> int16 in the same units
        wavelengths = [float(ds.tags(b)["wavelength"]) for b in range(1, 178)]
        hsi_wavelengths = [float(enmap.tags(b)["wavelength"]) for b in range(1, 178)]
        assert ds.tags(1)["wavelength_units"] == "Nanometers"
        assert "460" in ds.descriptions[0]
        fused = ds.read(masked=True)
    np.testing.assert_allclose(wavelengths, hsi_wavelengths, rtol=1e-6)
    assert fused.mask.mean() < 0.05
    assert 0 < float(fused.mean()) < 10000  # reflectance x 10000, like the input


@pytest.mark.slow
@pytest.mark.slow
def test_berlin_run_writes_the_qa_layer_on_the_output_grid(berlin_run):
    _, cwd = berlin_run
    with rasterio.open(cwd / "enmap_sim_berlin_30m_177b_fused.tif") as out, rasterio.open(cwd / "qa.tif") as qa:
        assert (qa.crs, qa.transform, qa.width, qa.height) == (out.crs, out.transform, out.width, out.height)
        assert qa.descriptions == ("srf_residual", "lr_correction", "novelty", "nodata_reason")
        assert qa.profile["tiled"] and qa.dtypes[0] == "float32"
        layers = qa.read()
        valid = out.read(1, masked=True).mask == False  # noqa: E712 - numpy array comparison
    reason = layers[3]
    np.testing.assert_array_equal(reason == 0, valid)  # nodata_reason is 0 exactly where the output has data
    assert np.isin(reason[~valid], [1, 2]).all()
    srf_residual, lr_correction, novelty = (band[valid] for band in layers[:3])
    assert np.isfinite(srf_residual).all() and np.median(srf_residual) < 0.05  # the network reproduces the MSI
    assert np.isfinite(lr_correction).all() and np.median(lr_correction) < 0.3
    assert np.median(novelty) < 1.0  # most pixels are like what the network was trained on


def test_berlin_run_reports_ratio_shift_and_srf_consistency(berlin_run):
    run, cwd = berlin_run
    check = json.loads((cwd / "report.json").read_text())["pair_check"]
    assert check["verdict"] == "consistent" and "Pair check: the pair looks consistent" in run.stderr
    report = json.loads((cwd / "report.json").read_text())
    assert report["resolution_ratio"] == pytest.approx(30 / 3.6, rel=1e-6)  # non-integer ratio 8.33
    assert len(report["shift_px"]) == 2 and all(abs(v) < 1 for v in report["shift_px"])
    assert report["training_pixels"] == 60 * 80
    assert [row["band"] for row in report["band_agreement"]] == ["band1", "band2", "band3", "band4"]
    for row in report["band_agreement"]:
        assert {"gain", "offset", "correlation"} <= set(row) and row["correlation"] > 0.9
    # The SRF-consistency error (fused cube seen through the HyMap bands vs the HyMap image) is printed.
    said = run.stdout + run.stderr
    match = re.search(r"SRF consistency RMSE vs the HR-MSI ([0-9.]+) \(([0-9.]+) % of its mean\)", said)
    assert match, said
    assert float(match.group(1)) == pytest.approx(report["srf_consistency_rmse"], rel=1e-3)
    assert 0 < report["srf_consistency_relative"] < 0.1
    assert "Residual shift" in said and "agreement" in said
    # machine-readable progress (what the QGIS plugin parses), ending at 100 % in the write stage
    progress = re.findall(r"^geolift: progress ([0-9.]+)% (read|train|write)$", run.stderr, re.MULTILINE)
    percents = [float(p) for p, _ in progress]
    assert percents == sorted(percents) and progress[-1] == ("100.0", "write")
    assert {stage for _, stage in progress} == {"read", "train", "write"}


@pytest.mark.slow
def test_berlin_output_records_version_parameters_and_report(berlin_run):
    _, cwd = berlin_run
    with rasterio.open(cwd / "enmap_sim_berlin_30m_177b_fused.tif") as ds:
        tags = ds.tags()
    assert tags["geolift_version"] == geolift.__version__
    parameters = json.loads(tags["geolift_parameters"])
    assert parameters["steps"] == BERLIN_STEPS and parameters["seed"] == 0
    stored = json.loads(tags["geolift_report"])
    assert stored["training_pixels"] == 4800 and len(stored["shift_px"]) == 2
    assert stored["resolution_ratio"] == pytest.approx(30 / 3.6, rel=1e-6)


# ----------------------------------------------------------------------------------------------- Wald case
def test_wald_case_through_the_cli_matches_the_library(wald, tmp_path):
    out = tmp_path / "wald_fused.tif"
    run = run_geolift(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--steps", WALD_STEPS, "--seed", "0",
                       "--dtype", "float32", "-o", out, "--progress", "none"])
    assert run.exit_code == 0, run.stderr
    with rasterio.open(out) as ds:
        assert ds.transform == wald.hr_transform and (ds.height, ds.width) == wald.gt.shape[1:]
        fused = ds.read()
        preset = json.loads(ds.tags()["geolift_parameters"])["preset"]  # compare like with like: the same recipe

    model = SpectraLift(preset=preset, steps=WALD_STEPS, seed=0).fit(wald.lr_hsi, wald.R)
    grid = refine.GridPair(wald.hr_transform, wald.gt.shape[1:], wald.lr_transform, wald.lr_hsi.shape[1:])
    library = model.predict(wald.hr_msi, grid=grid)  # with the recipe's consistency step, as the pipeline runs it
    bicubic = evaluate.bicubic_upsample(wald.lr_hsi, wald.gt.shape[1:])
    cli_psnr, lib_psnr = evaluate.psnr(wald.gt, fused), evaluate.psnr(wald.gt, library)
    cli_sam, lib_sam = evaluate.sam(wald.gt, fused), evaluate.sam(wald.gt, library)
    assert cli_psnr == pytest.approx(lib_psnr, abs=0.05)
    assert cli_sam == pytest.approx(lib_sam, abs=0.05)
    assert cli_psnr > evaluate.psnr(wald.gt, bicubic) + 5.0
    assert cli_sam < evaluate.sam(wald.gt, bicubic)


def test_members_option_fuses_the_library_ensemble(wald, tmp_path):
    # --members reaches the model as SpectraLift(members=...) does: the same ensemble as the library's, recorded in
    # the output's parameters; clearly not the single network's result.
    out = tmp_path / "ensemble.tif"
    run = run_geolift(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--steps", 60, "--members", 2,
                       "--dtype", "float32", "-o", out, "--progress", "none"])
    assert run.exit_code == 0, run.stderr
    with rasterio.open(out) as ds:
        fused = ds.read()
        parameters = json.loads(ds.tags()["geolift_parameters"])
    assert parameters["members"] == 2
    grid = refine.GridPair(wald.hr_transform, wald.gt.shape[1:], wald.lr_transform, wald.lr_hsi.shape[1:])
    ensemble, single = (SpectraLift(preset=parameters["preset"], steps=60, members=k, seed=0).fit(wald.lr_hsi, wald.R)
                        .predict(wald.hr_msi, grid=grid) for k in (2, 1))
    tolerance = 1e-3 * float(np.nanmax(wald.lr_hsi))
    assert np.abs(fused - ensemble).max() < tolerance
    assert np.abs(fused - single).mean() > tolerance  # on average, not only somewhere: the option took effect

    refused = run_geolift(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--members", 0, "-o",
                           tmp_path / "none.tif", "--progress", "none"])
    assert refused.exit_code == 2 and "--members" in refused.stderr
    assert not (tmp_path / "none.tif").exists()


def test_single_band_files_fuse_with_band_names_from_file_names(wald, write_raster, tmp_path):
    # As Sentinel-2 archives ship them: one file per band, B08 here at half the resolution of the others.
    files = []
    for k, token in enumerate(["B02", "B03", "B04", "B08"]):
        band = wald.hr_msi[k:k + 1].astype(np.float32)
        transform = wald.hr_transform
        if token == "B08":
            band = band.reshape(1, band.shape[1] // 2, 2, band.shape[2] // 2, 2).mean(axis=(2, 4))
            transform = wald.hr_transform @ Affine.scale(2)
        files.append(write_raster(tmp_path / f"T33UUU_20220724T104526_{token}.tif", band, crs=wald.crs,
                                  transform=transform))
    out = tmp_path / "fused.tif"
    report_path = tmp_path / "report.json"

    run = run_geolift(["fuse", wald.hsi, *files, "--sensor", "sentinel2", "--steps", WALD_STEPS, *ONE_NETWORK,
                       "--dtype", "float32", "-o", out, "--report", report_path, "--progress", "none"])

    assert run.exit_code == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert report["msi_bands"] == ["B2", "B3", "B4", "B8"]
    assert report["msi"] == [str(f) for f in files]
    with rasterio.open(out) as ds:
        assert ds.transform == wald.hr_transform  # the finest band file's grid
        fused = ds.read()
    bicubic = evaluate.bicubic_upsample(wald.lr_hsi, wald.gt.shape[1:])
    assert evaluate.psnr(wald.gt, fused) > evaluate.psnr(wald.gt, bicubic) + 3.0


def test_msi_bands_identified_from_their_own_wavelengths_and_the_log_says_so(wald, write_raster, tmp_path):
    """No names, but band centres in the metadata: each centre falls in one Sentinel-2 band's half-maximum range."""
    msi = write_raster(tmp_path / "three_bands.tif", wald.hr_msi[:3].astype(np.float32), crs=wald.crs,
                       transform=wald.hr_transform, wavelengths=[492.0, 559.0, 665.0])
    report_path = tmp_path / "report.json"
    run = run_geolift(["fuse", wald.hsi, msi, "--sensor", "sentinel2", "--steps", "20", *ONE_NETWORK,
                       "--progress", "none", "-o", tmp_path / "fused.tif", "--report", report_path])
    assert run.exit_code == 0, run.stderr
    assert json.loads(report_path.read_text())["msi_bands"] == ["B2", "B3", "B4"]
    assert "MSI bands B2, B3, B4, identified from the MSI's band centres" in run.stderr


def test_warnings_are_one_line_like_errors(berlin, tmp_path):
    """A GeoliftWarning reaches the user as `geolift: warning: <sentence>`, with no source path (real process)."""
    run = run_geolift(["fuse", berlin.hsi_tif, berlin.msi_tif, "--sensor", "sentinel2", "--bands", "B1,B2,B3,B4",
                       "--drop-uncovered", "--steps", "20", *ONE_NETWORK, "--progress", "none",
                       "-o", tmp_path / "fused.tif"],
                      process=True)
    assert run.exit_code == 0, run.stderr
    warning_lines = [line for line in run.stderr.splitlines() if "Dropped" in line]
    assert len(warning_lines) == 1, run.stderr
    assert warning_lines[0].startswith("geolift: warning: Dropped Sentinel-2A MSI band(s) B1")
    assert "GeoliftWarning" not in run.stderr and ".py:" not in run.stderr


def test_enmap_and_worldview3_with_all_eight_vnir_bands_run_by_default(tmp_path, write_raster):
    """EnMAP starts at 418 nm, WorldView-3 B1 (coastal) at 400 nm: used truncated, with one warning naming it."""
    from helpers import read_potsdam_cube

    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    bands = [f"B{k}" for k in range(1, 9)]
    R = srf.build_response("worldview3", bands, wavelengths, fwhm_nm=fwhm, min_coverage=0.01).matrix
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=1)
    hsi = write_raster(tmp_path / "enmap.tif", case.lr_hsi.astype(np.float32), crs=crs,
                       transform=transform @ Affine.scale(4), wavelengths=wavelengths, fwhm=fwhm)
    msi = write_raster(tmp_path / "wv3.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                       descriptions=bands)
    report_path = tmp_path / "report.json"
    run = run_geolift(["fuse", hsi, msi, "--sensor", "worldview3", "--steps", "20", *ONE_NETWORK, "--progress", "none",
                       "-o", tmp_path / "fused.tif", "--report", report_path])
    assert run.exit_code == 0, run.stderr
    assert json.loads(report_path.read_text())["msi_bands"] == bands
    warnings = [line for line in run.stderr.splitlines() if line.startswith("geolift: warning:")]
    assert len(warnings) == 1 and "B1 (" in warnings[0] and "% covered" in warnings[0], run.stderr
    coverage = int(re.search(r"B1 \((\d+)% covered", warnings[0]).group(1))
    assert srf.MIN_COVERAGE * 100 <= coverage < srf.FULL_COVERAGE * 100


# ------------------------------------------------------------------------------------------ the pair check
S2_TEN = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


@pytest.fixture(scope="module")
def ten_band_pair(tmp_path_factory):
    """A Wald case from the Potsdam EnMAP cube with a 10-band Sentinel-2A MSI (bands named in the file)."""
    from helpers import read_potsdam_cube, write_tif

    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", S2_TEN, wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=4, seed=5)
    folder = tmp_path_factory.mktemp("ten_bands")
    hsi = write_tif(folder / "enmap.tif", case.lr_hsi.astype(np.float32), crs=crs,
                    transform=transform @ Affine.scale(4), wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(folder / "s2.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform)
    units = write_tif(folder / "s2_x10000.tif", (case.hr_msi * 10000).astype(np.float32), crs=crs,
                      transform=transform)
    return hsi, msi, units


@pytest.mark.parametrize("bands, msi_file, words", [
    (S2_TEN[::-1], "s2.tif", ("inconsistent", "--bands")),  # the order of --bands reversed
    (S2_TEN, "s2_x10000.tif", ("inconsistent", "units", "--harmonize")),  # the MSI in other units
])
def test_an_inconsistent_pair_is_said_and_strict_refuses_it(ten_band_pair, tmp_path, bands, msi_file, words):
    hsi, msi, _ = ten_band_pair
    msi = msi.parent / msi_file
    args = ["fuse", hsi, msi, "--sensor", "sentinel2", "--bands", ",".join(bands), "--steps", "20", *ONE_NETWORK,
            "--progress", "none", "--report", tmp_path / "report.json"]
    run = run_geolift([*args, "-o", tmp_path / "fused.tif"])
    assert run.exit_code == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("geolift: warning:")]
    assert len(warnings) == 1 and all(w in warnings[0] for w in words), run.stderr
    assert json.loads((tmp_path / "report.json").read_text())["pair_check"]["verdict"] == "inconsistent"

    strict = run_geolift([*args, "-o", tmp_path / "strict.tif", "--strict"])
    assert strict.exit_code == 8, strict.stderr
    assert error_lines(strict) == [strict.stderr.strip().splitlines()[-1]] and "--strict" in strict.stderr
    assert not (tmp_path / "strict.tif").exists()


def test_the_right_bands_in_the_right_order_pass_the_check(ten_band_pair, tmp_path):
    hsi, msi, _ = ten_band_pair
    run = run_geolift(["fuse", hsi, msi, "--sensor", "sentinel2", "--bands", ",".join(S2_TEN), "--steps", "20",
                       *ONE_NETWORK,
                       "--progress", "none", "--strict", "-o", tmp_path / "fused.tif", "--report",
                       tmp_path / "report.json"])
    assert run.exit_code == 0, run.stderr
    check = json.loads((tmp_path / "report.json").read_text())["pair_check"]
    assert check["verdict"] == "consistent" and check["min_correlation"] > 0.9
    assert "geolift: warning:" not in run.stderr


# -------------------------------------------------------------------------------------- other commands
def test_version():
    run = run_geolift(["--version"], process=True)
    assert run.exit_code == 0
    assert run.stdout.strip() == f"geolift {geolift.__version__}"


def test_sensors_lists_sensors_and_bands():
    listing = run_geolift(["sensors"])
    assert listing.exit_code == 0
    assert "sentinel2a" in listing.stdout and "landsat8" in listing.stdout
    bands = run_geolift(["sensors", "sentinel2"])
    assert bands.exit_code == 0
    lines = [line.split() for line in bands.stdout.splitlines()[1:]]
    names = [line[0] for line in lines]
    assert names[:4] == ["B1", "B2", "B3", "B4"] and "B8A" in names and "B12" in names
    b2 = bands.stdout.splitlines()[1 + names.index("B2")]
    assert 480 < float(re.search(r"centroid\s+([0-9.]+)", b2).group(1)) < 500


def test_sensors_unknown_name_is_one_clear_error():
    run = run_geolift(["sensors", "sentinel7"])
    assert run.exit_code == 2
    assert error_lines(run) == run.stderr.strip().splitlines()
    assert "sentinel7" in run.stderr


def test_fuse_help_names_the_default_output():
    run = run_geolift(["fuse", "--help"])
    assert run.exit_code == 0
    assert "_fused.tif" in run.stdout and "current folder" in run.stdout


# ------------------------------------------------------------------------------------------------ exit codes
def documented_exit_codes() -> set[int]:
    """The codes the user guide's "Exit codes:" paragraph lists (0 included)."""
    text = (REPO / "docs" / "user-guide.md").read_text()
    paragraph = text[text.index("Exit codes:"):].split("\n\n")[0]
    return {int(code) for code in re.findall(r"\b(\d+) [a-z]", paragraph)}


def test_the_user_guide_documents_every_exit_code():
    """One code per error class (geolift.errors) plus Ctrl-C and out of memory, all in the user guide."""
    from geolift import errors
    from geolift.cli import EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GeoliftError)]
    codes = {c.exit_code for c in classes} | {EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY}
    assert codes == {1, 2, 3, 4, 5, 6, 7, 8, 130, 137}
    assert documented_exit_codes() == codes | {0}
    assert errors.JobsFailedError.exit_code != errors.GeoliftError.exit_code  # a failed batch is told apart


@pytest.mark.parametrize("raised, code, words", [
    (GeoliftError("something geolift refused"), 1, "something geolift refused"),
    (KeyboardInterrupt(), 130, "interrupted; no output was written"),
    (MemoryError(), 137, "--tile-size"),
])
def test_run_command_maps_what_escapes_a_command_to_one_line_and_its_code(raised, code, words, capsys):
    """Codes 1, 130 and 137 come from run_command (the others from the error classes, tested on real input)."""
    import typer

    from geolift.cli import run_command

    def action():
        raise raised

    with pytest.raises(typer.Exit) as exit_info:
        run_command(action)
    assert exit_info.value.exit_code == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("geolift: error:") and words in err
    assert "--block-size" not in err  # no command has that option


def test_ctrl_c_during_training_exits_130_and_leaves_nothing(wald, tmp_path, leftovers):
    """A real SIGINT to a running `geolift fuse`: exit 130, one line, no output and no temporary file."""
    out = tmp_path / "fused.tif"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "geolift", "fuse", str(wald.hsi), str(wald.msi), "--sensor", "sentinel2",
         "--steps", "1000000", "--progress", "plain", "-o", str(out)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if "% train" in line:  # training has started
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "geolift: error: interrupted; no output was written."
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_report_that_cannot_be_written_is_one_error_and_the_output_is_kept(wald, tmp_path):
    """--report onto a folder fails only after the fusion: exit 5, one line, the GeoTIFF stays.
    The bands are given space-separated, as a manifest's bands column is."""
    (tmp_path / "report.json").mkdir()
    out = tmp_path / "fused.tif"
    run = run_geolift(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--bands", "B2 B3 B4 B8",
                       "--steps", "20", *ONE_NETWORK, "--progress", "none", "-o", out,
                       "--report", tmp_path / "report.json"])
    assert run.exit_code == 5, run.stderr
    assert error_lines(run) == [run.stderr.strip().splitlines()[-1]]
    assert "report.json" in error_lines(run)[0] and "Traceback" not in run.stderr
    assert out.is_file()



def test_cuda_asked_for_on_a_machine_without_it_stops_before_reading_anything(wald, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request is honoured")
    run = run_geolift(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--device", "cuda",
                       "-o", tmp_path / "cuda.tif", "--progress", "none"])
    assert run.exit_code == 4
    assert "CUDA is not available on this machine" in run.stderr
    assert "Output grid" not in run.stderr and "HSI:" not in run.stderr  # no scene was read first
    assert not (tmp_path / "cuda.tif").exists()
