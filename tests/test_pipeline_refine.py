"""The consistency step (geolift.refine) inside the file pipeline: the default ``geolift`` preset.

On the Potsdam Wald case written as GeoTIFFs (conftest's ``wald``): the default CLI run beats ``--preset spectralift``
and records the blur it estimated; the tile-streamed two passes equal :func:`geolift.refine.refine` run in memory on
the same fitted model; the worker-thread pipeline hands errors to the caller; ``--threads`` sets torch's threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from geolift import evaluate
from geolift import refine as rf
from geolift.cli import _register_commands, app
from geolift.errors import GeoliftWarning
from geolift.fuse import FuseOptions, pipelined, prepare_fusion, write_fusion
from geolift.model import DEFAULT_PRESET

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WALD_STEPS = 300


def cli(args):
    _register_commands()
    logger = logging.getLogger("geolift")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved  # setup_logging must not leak into other tests


@pytest.fixture(scope="module")
def cli_runs(wald, tmp_path_factory):
    """The Wald case through ``geolift fuse`` with the default preset and with ``--preset spectralift``."""
    folder = tmp_path_factory.mktemp("presets")
    runs = {}
    for name, extra in (("default", []), ("spectralift", ["--preset", "spectralift"])):
        out = folder / f"{name}.tif"
        report = folder / f"{name}.json"
        result = cli(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--steps", WALD_STEPS, "--seed", 0,
                      "--dtype", "float32", "-o", out, "--report", report, "--progress", "none", "--quiet", *extra])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            runs[name] = (ds.read(), ds.tags(), json.loads(report.read_text()))
    return runs


def test_default_preset_is_the_models_default_and_refines():
    assert FuseOptions().preset == DEFAULT_PRESET == "geolift"


def test_default_cli_run_beats_the_faithful_preset(wald, cli_runs):
    default, tags, report = cli_runs["default"]
    faithful, faithful_tags, faithful_report = cli_runs["spectralift"]
    assert json.loads(tags["geolift_parameters"])["preset"] == "geolift"
    assert json.loads(faithful_tags["geolift_parameters"])["preset"] == "spectralift"
    gain = evaluate.psnr(wald.gt, default) - evaluate.psnr(wald.gt, faithful)
    assert gain > 0.5, f"default preset only {gain:+.2f} dB over spectralift"
    assert evaluate.sam(wald.gt, default) < evaluate.sam(wald.gt, faithful)
    # the correction lives in R's null space: the result still agrees with the HR-MSI as well as a network output
    assert report["srf_consistency_relative"] < 0.05 and faithful_report["srf_consistency_relative"] < 0.05


def test_refinement_and_estimated_blur_are_recorded(cli_runs):
    _, tags, report = cli_runs["default"]
    assert report["refined"] is True and report["refine_note"] == ""
    # the Wald case's Gaussian PSF (sigma 0.85 x ratio 4 = 3.4 HR px) with the protocol's zero border
    assert report["psf"]["family"] == "gaussian" and report["psf"]["boundary"] == "zero"
    assert report["psf"]["width_px"] == pytest.approx(3.4, rel=0.15)
    assert report["refine_residual_after"] < report["refine_residual_before"]
    stored = json.loads(tags["geolift_consistency"])
    assert stored["refined"] is True and stored["psf"]["fwhm_px"] == pytest.approx(report["psf"]["fwhm_px"])
    assert json.loads(tags["geolift_report"])["refined"] is True
    _, faithful_tags, faithful_report = cli_runs["spectralift"]
    assert faithful_report["refined"] is False and "spectralift" in faithful_report["refine_note"]
    assert json.loads(faithful_tags["geolift_consistency"])["refined"] is False


@pytest.mark.parametrize("tile", [32, 48])
def test_streamed_two_passes_equal_refine_in_memory(wald, tmp_path, tile):
    # 48 px tiles do not divide 64 x 128: partial edge tiles are exercised too.
    options = FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0, dtype="float32", tile_size=tile)
    plan = prepare_fusion(wald.hsi, wald.msi, options)
    assert plan.report.refined and plan.correction is not None
    assert not plan.report.shift_applied  # the Wald pair is co-registered: the grids are the written ones
    out = tmp_path / "streamed.tif"
    write_fusion(plan, out)
    with rasterio.open(out) as ds:
        streamed = ds.read()

    x0 = plan.model.predict(wald.hr_msi.astype(np.float32), consistency=False)
    grid = rf.GridPair(wald.hr_transform, wald.gt.shape[1:], wald.lr_transform, wald.lr_hsi.shape[1:])
    expected, psf, _ = rf.refine(x0, wald.lr_hsi.astype(np.float32), wald.hr_msi.astype(np.float32), plan.response,
                                 grid=grid, value_range=plan.model.output_range)
    assert psf.width == pytest.approx(plan.report.psf["width_px"], rel=1e-6)
    assert np.isfinite(streamed).all()
    assert np.abs(expected - x0).max() > 1e-3  # the correction is not nothing
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-5)


@pytest.mark.reproducible
def test_default_output_is_bit_identical_for_every_tile_size(wald, tmp_path):
    """Pass 1 reads fixed windows whatever the tile size, and every per-pixel step is exact: the tile size and the
    number of prediction threads change the file's layout and the speed, never the pixels (48 px tiles do not
    divide the grid: partial tiles too)."""
    pixels, solves = [], []
    for tile, threads in ((32, 1), (48, 2)):
        plan = prepare_fusion(wald.hsi, wald.msi, FuseOptions(sensor="sentinel2", steps=WALD_STEPS, seed=0,
                                                              dtype="float32", tile_size=tile, num_threads=threads))
        assert plan.report.refined
        # the LR solve's own float64 figures: any change in how pass 1 summed would show here first
        solves.append((plan.report.refine_regularization, plan.report.refine_residual_before,
                       plan.report.refine_residual_after))
        write_fusion(plan, tmp_path / f"tile{tile}.tif")
        with rasterio.open(tmp_path / f"tile{tile}.tif") as ds:
            assert ds.block_shapes[0] == (tile, tile)
            pixels.append(ds.read())
    assert solves[0] == solves[1]
    np.testing.assert_array_equal(pixels[0], pixels[1])


def test_hsi_in_another_crs_skips_the_step_with_a_warning(wald, tmp_path, write_raster):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    lr = wald.lr_hsi.astype(np.float32)
    rows, cols = lr.shape[1:]
    t = wald.lr_transform
    transform, width, height = calculate_default_transform(
        wald.crs, "EPSG:4326", cols, rows, t.c, t.f + t.e * rows, t.c + t.a * cols, t.f)
    warped = np.full((lr.shape[0], height, width), np.nan, np.float32)
    reproject(lr, warped, src_transform=t, src_crs=wald.crs, dst_transform=transform, dst_crs="EPSG:4326",
              resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
    hsi = write_raster(tmp_path / "hsi_4326.tif", warped, crs="EPSG:4326", transform=transform,
                       wavelengths=wald.wavelengths, fwhm=wald.fwhm, nodata=float("nan"))
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the geolift logger may not propagate (the CLI tests set it up)
    logger = logging.getLogger("geolift")
    logger.addHandler(handler)
    try:
        plan = prepare_fusion(hsi, wald.msi, FuseOptions(sensor="sentinel2", steps=50, seed=0))
    finally:
        logger.removeHandler(handler)
    assert plan.model.consistency and plan.correction is None
    assert not plan.report.refined and "different CRSs" in plan.report.refine_note
    assert any("Consistency step skipped" in r.getMessage() for r in records)
    out = tmp_path / "fused.tif"
    write_fusion(plan, out)
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["geolift_consistency"])["refined"] is False


def test_pipelined_keeps_order_and_raises_worker_errors_in_the_caller():
    seen_threads = set()

    def square(i):
        seen_threads.add(threading.current_thread().name)
        return i * i

    assert [v for _, v in pipelined(square, range(20))] == [i * i for i in range(20)]
    assert seen_threads == {"geolift-predict"}

    def fail_at_3(i):
        if i == 3:
            raise ValueError("boom at 3")
        return i

    got = []
    with pytest.raises(ValueError, match="boom at 3"):
        for item, _ in pipelined(fail_at_3, range(10)):
            got.append(item)
    assert got == [0, 1, 2]
    assert not any(t.name == "geolift-predict" for t in threading.enumerate())


def test_pipelined_with_several_workers_keeps_order_and_bounds_the_look_ahead():
    """Pass 1 predicts on several threads: results still come in order, no item starts more than
    workers + depth places ahead of the consumer (memory stays bounded), and errors arrive in order."""
    lock = threading.Lock()
    consumed = {"n": 0}
    ahead = []
    threads = set()

    def slow_square(i):
        with lock:
            ahead.append(i - consumed["n"])
            threads.add(threading.current_thread().name)
        time.sleep(0.002 * (i % 3))  # later items often finish first
        return i * i

    got = []
    for i, value in pipelined(slow_square, range(40), depth=1, workers=3):
        got.append(value)
        with lock:
            consumed["n"] = i + 1
    assert got == [i * i for i in range(40)]
    assert max(ahead) <= 3 + 1 and max(ahead) >= 2  # the workers really ran ahead, within the bound
    assert threads == {"geolift-predict"}

    def fail_at_5(i):
        time.sleep(0.001 * (7 - i % 7))
        if i == 5:
            raise ValueError("boom at 5")
        return i

    seen = []
    with pytest.raises(ValueError, match="boom at 5"):
        for item, _ in pipelined(fail_at_5, range(30), workers=3):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert not any(t.name == "geolift-predict" for t in threading.enumerate())


def test_pipelined_with_no_worker_computes_on_the_callers_thread_on_demand():
    """A one-core job (a batch task on a one-thread worker) predicts inline: nothing runs ahead of the consumer,
    and no thread is started."""
    calls = []
    caller = threading.current_thread().name

    def square(i):
        calls.append((i, threading.current_thread().name))
        return i * i

    results = pipelined(square, range(5), workers=0)
    assert calls == []  # nothing computed before it is asked for
    first = next(iter(results))
    assert first == (0, 0) and calls == [(0, caller)]
    assert [v for _, v in results] == [1, 4, 9, 16]
    assert {name for _, name in calls} == {caller}


def test_a_one_thread_job_writes_the_same_output_without_a_predict_thread(wald, tmp_path):
    """num_threads=1 (a batch task's budget) takes the inline path and writes the same arrays as the default."""
    options = FuseOptions(sensor="sentinel2", steps=50, seed=0, tile_size=32)
    plan = prepare_fusion(wald.hsi, wald.msi, options)
    seen: dict[int, set] = {2: set(), 1: set()}
    for threads, name in ((2, "two.tif"), (1, "one.tif")):
        plan.options = replace(plan.options, num_threads=threads)
        write_fusion(plan, tmp_path / name,
                     progress=lambda *_, n=threads: seen[n].update(t.name for t in threading.enumerate()))
    assert "geolift-predict" in seen[2] and "geolift-predict" not in seen[1]
    with rasterio.open(tmp_path / "two.tif") as a, rasterio.open(tmp_path / "one.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_failure_while_predicting_leaves_no_output(wald, tmp_path, leftovers):
    options = FuseOptions(sensor="sentinel2", steps=50, seed=0, tile_size=32)
    plan = prepare_fusion(wald.hsi, wald.msi, options)
    calls = {"n": 0}
    real = plan.model.predict

    def predict_then_fail(msi, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("out of memory in block 3")
        return real(msi, **kwargs)

    plan.model.predict = predict_then_fail
    out = tmp_path / "fused.tif"
    with pytest.raises(MemoryError):
        write_fusion(plan, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_threads_option_sets_torch_threads_during_the_run(wald, tmp_path, monkeypatch):
    import torch

    from geolift import model as model_module

    seen = []
    real_fit = model_module.SpectraLift.fit

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(model_module.SpectraLift, "fit", spy)
    before = torch.get_num_threads()
    out = tmp_path / "t.tif"
    result = cli(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--steps", 20, "--threads", 2,
                  "--preset", "spectralift", "-o", out, "--progress", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == [2] and torch.get_num_threads() == before
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["geolift_parameters"])["num_threads"] == 2


def test_help_names_the_default_and_the_faithful_preset():
    result = cli(["fuse", "--help"])
    text = " ".join(result.output.replace("│", " ").split())  # rich's panel borders may fall inside a wrapped line
    assert "geolift (default)" in text and "spectralift" in text and "faithful" in text


def test_existing_output_error_names_the_overwrite_option(wald, tmp_path):
    out = tmp_path / "exists.tif"
    out.write_bytes(b"x")
    result = cli(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "-o", out, "--progress", "none"])
    assert result.exit_code == 5
    assert "--overwrite" in result.output


# ------------------------------------------------------------------------------------------ training at scale
def test_sampled_fit_on_a_large_scene_copies_only_a_stratified_pool(monkeypatch):
    """Above TRAINING_POOL_PIXELS valid pixels the sampled recipe trains from a stratified pool, without float64
    copies of the whole scene (it used to hold ~4 of them: ~8 GB for 1000 x 1000 x 200)."""
    import tracemalloc

    from geolift import model as model_module
    from geolift.model import SpectraLift

    rng = np.random.default_rng(3)
    bands, side = 200, 400  # 160 000 pixels, 128 MB as float32
    endmembers = rng.uniform(0.05, 0.6, (bands, 3)).astype(np.float32)
    abundances = rng.dirichlet([0.3, 0.3, 0.3], side * side).T.astype(np.float32)
    lr = (endmembers @ abundances).reshape(bands, side, side)
    lr[:, :5, :] = np.nan  # nodata rows never enter the pool
    R = rng.uniform(0, 1, (4, bands))
    R /= R.sum(axis=1, keepdims=True)

    pools = []
    real_pool = model_module._stratified_pool
    monkeypatch.setattr(model_module, "_stratified_pool", lambda *a, **k: pools.append(real_pool(*a, **k)) or pools[-1])
    tracemalloc.start()
    a = SpectraLift(steps=30, seed=1, max_train_pixels=256).fit(lr, R)  # the members' fit (the student: below)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.5 * lr.nbytes, f"fit allocated {peak / 1e6:.0f} MB for a {lr.nbytes / 1e6:.0f} MB scene"

    pool = pools[0]
    assert pool.size == model_module.TRAINING_POOL_PIXELS == len(np.unique(pool))
    assert pool.min() >= 5 * side  # no nodata pixel
    assert a.n_train_pixels == (side - 5) * side  # all valid pixels count (and defined the strata)
    b = SpectraLift(steps=30, seed=1, max_train_pixels=256).fit(lr, R)
    np.testing.assert_array_equal(pools[1], pool)
    msi = np.tensordot(R, lr[:, 100:140, 100:140], axes=1)
    with pytest.warns(GeoliftWarning, match="student is learning"):  # each student learns this 40 x 40 image
        predictions = [model.predict(msi, consistency=False) for model in (a, b)]
    np.testing.assert_array_equal(*predictions)


@pytest.mark.parametrize("preset", ["geolift", "spectralift"])
def test_the_library_gives_what_geolift_fuse_writes_bit_for_bit(wald, tmp_path, preset):
    """One quality for every entry point: ``SpectraLift().fit(lr_hsi, R).predict(hr_msi)`` on the arrays a Wald
    case wrote gives the pixels ``geolift fuse`` writes from those files, the consistency step included (the ratio
    follows from the shapes); the faithful preset stays the network's alone."""
    from geolift.model import SpectraLift

    out = tmp_path / f"{preset}.tif"
    result = cli(["fuse", wald.hsi, wald.msi, "--sensor", "sentinel2", "--steps", WALD_STEPS, "--seed", "0",
                  "--preset", preset, "--dtype", "float32", "-o", out, "--progress", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        written = ds.read()
        refined = json.loads(ds.tags()["geolift_consistency"])["refined"]
    model = SpectraLift(preset=preset, steps=WALD_STEPS, seed=0)
    library = model.fit(wald.lr_hsi.astype(np.float32), wald.R).predict(wald.hr_msi.astype(np.float32))
    assert refined is (preset == "geolift") and model.consistency is refined
    np.testing.assert_array_equal(library, written)
    if refined:  # the step did something, and the network alone is still one argument away
        network = model.predict(wald.hr_msi.astype(np.float32), consistency=False)
        assert np.abs(network - library).max() > 1e-3


def test_the_library_says_what_the_consistency_step_needs():
    from geolift.errors import ModelError
    from geolift.model import SpectraLift

    rng = np.random.default_rng(0)
    lr, R = rng.random((6, 8, 8)), rng.random((3, 6))
    model = SpectraLift(steps=5).fit(lr, R)
    with pytest.raises(ModelError, match="not the LR-HSI's area at a finer resolution"):
        model.predict(rng.random((3, 8, 12)))  # 1 and 1.5: no single ratio
    assert model.awaiting_student  # the refused call trained nothing
    with pytest.warns(GeoliftWarning, match="student is learning"):  # the network alone on an 8 x 8 image
        assert model.predict(rng.random((3, 8, 8)), consistency=False).shape == (6, 8, 8)
    hr = rng.random((3, 32, 32))
    forgetful = SpectraLift(steps=5).fit(lr, R, keep_lr_hsi=False, hr_msi=hr)
    with pytest.raises(ModelError, match="keep_lr_hsi=False"):
        forgetful.predict(hr, consistency=True)
    with pytest.warns(UserWarning, match="Consistency step skipped: the model was fitted with keep_lr_hsi=False"):
        forgetful.predict(hr)
