"""geolift assess: Wald's protocol at reduced scale on the user's own pair (the Berlin sample, a Potsdam pair)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine
from helpers import SAMPLE, read_potsdam_cube, write_tif
from typer.testing import CliRunner

from geolift import evaluate, srf
from geolift.assess import METHODS, assess
from geolift.errors import InputError
from geolift.fuse import FuseOptions

BERLIN_HSI = SAMPLE / "enmap_sim_berlin_30m_177b.tif"
BERLIN_MSI = SAMPLE / "hymap_berlin_3p6m_4b.tif"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_assess_on_the_berlin_sample_prints_the_table_and_writes_report_and_figure(tmp_path):
    from geolift.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["assess", str(BERLIN_HSI), str(BERLIN_MSI), "--report",
                                      str(tmp_path / "assess.json"), "--png", str(tmp_path / "assess.png"), "-q"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[:5] == ["method", "PSNR", "SAM", "ERGAS", "SSIM"]
    assert [line.split()[0] for line in lines[2:5]] == list(METHODS)
    report = json.loads((tmp_path / "assess.json").read_text())
    assert report["factor"] == 8 and report["psf"]["family"]  # ratio 30 m / 3.6 m, blur estimated from the data
    psnr = {m: report["metrics"][m]["all"]["PSNR"] for m in METHODS}
    assert min(psnr["geolift"], psnr["spectralift"]) > psnr["bicubic"] + 2.0  # measured: 28.6 and 28.6 vs 24.0
    assert {"VNIR", "SWIR"} <= set(report["metrics"]["geolift"])
    assert (tmp_path / "assess.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_assess_on_a_potsdam_pair(tmp_path):
    """The Potsdam EnMAP cube as a 90 m HSI with a 30 m Sentinel-2 MSI made from it (ratio 3)."""
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", ["B2", "B3", "B4", "B8"], wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=3, seed=1)
    hsi = write_tif(tmp_path / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs,
                    transform=transform @ Affine.scale(3), wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(tmp_path / "msi.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                    descriptions=["B2", "B3", "B4", "B8"])
    report, arrays = assess(hsi, msi, FuseOptions(sensor="sentinel2a", torch_threads=1))
    assert report.factor == 3 and report.reduced_shape == (7, 14)
    psnr = {m: report.metrics[m]["all"]["PSNR"] for m in METHODS}
    # Measured: faithful 20.8 dB, bicubic 20.4, geolift's default 17.2: on 98 training pixels the default recipe
    # does worse than the faithful one, which is what assess is there to reveal before an archive is fused.
    assert psnr["spectralift"] > psnr["bicubic"]
    assert arrays.truth.shape == arrays.predictions["geolift"].shape == (218, 21, 42)


def test_a_scene_too_small_to_assess_is_refused_clearly(tmp_path):
    cube, wavelengths, fwhm, crs, transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", ["B2", "B3", "B4", "B8"], wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube[:, :48, :48], R, ratio=4, seed=1)  # a 12 x 12 px HSI
    hsi = write_tif(tmp_path / "hsi.tif", case.lr_hsi.astype(np.float32), crs=crs,
                    transform=transform @ Affine.scale(4), wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(tmp_path / "msi.tif", case.hr_msi.astype(np.float32), crs=crs, transform=transform,
                    descriptions=["B2", "B3", "B4", "B8"])
    with pytest.raises(InputError, match="too few to train on"):
        assess(hsi, msi, FuseOptions(sensor="sentinel2a", steps=10))
