"""Shared fixtures for the fusion tests: the sample-data pair, a GeoTIFF writer, and a Wald-protocol case.

The Wald case is the small Potsdam EnMAP cube (128 x 64 px, 218 good bands) degraded as in the SpectraLift paper
(ratio 4, Sentinel-2A B2, B3, B4, B8) and written once per session as two GeoTIFFs, so the file pipeline can be
checked against a known ground truth in a second or two of training. Plain helpers are in helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from helpers import (
    WALD_BANDS,
    WALD_RATIO,
    BerlinPair,
    WaldFiles,
    read_potsdam_cube,
    temp_leftovers,
    write_tif,
)

from geolift import evaluate, srf


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train and predict on one torch thread (restored afterwards).

    The test machine has 2 cores shared with other jobs; with two OpenMP threads the small fits here were 6-13x
    slower than with one (threads wait on each other when a core is busy). Results do not depend on it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def write_raster():
    """The :func:`write_tif` helper, for tests that build their own inputs."""
    return write_tif


@pytest.fixture(scope="session")
def berlin() -> BerlinPair:
    return BerlinPair()


@pytest.fixture(scope="session")
def wald(tmp_path_factory) -> WaldFiles:
    cube, wavelengths, fwhm, crs, hr_transform = read_potsdam_cube()
    R = srf.response_matrix("sentinel2a", list(WALD_BANDS), wavelengths, fwhm_nm=fwhm)
    case = evaluate.make_wald_case(cube, R, ratio=WALD_RATIO, seed=42)
    lr_transform = hr_transform @ Affine.scale(WALD_RATIO)
    folder = tmp_path_factory.mktemp("wald")
    hsi = write_tif(folder / "wald_lr_hsi.tif", case.lr_hsi.astype(np.float32), crs=crs, transform=lr_transform,
                    wavelengths=wavelengths, fwhm=fwhm)
    msi = write_tif(folder / "wald_hr_msi.tif", case.hr_msi.astype(np.float32), crs=crs, transform=hr_transform,
                    descriptions=list(WALD_BANDS))
    return WaldFiles(hsi=hsi, msi=msi, gt=case.gt, lr_hsi=case.lr_hsi, hr_msi=case.hr_msi, R=case.R,
                     wavelengths=wavelengths, fwhm=fwhm, crs=crs, hr_transform=hr_transform,
                     lr_transform=lr_transform)


@pytest.fixture(scope="session")
def leftovers():
    """The :func:`temp_leftovers` helper."""
    return temp_leftovers
