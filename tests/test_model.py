"""Tests of the SpectraLift engine (geolift.model): architecture, schedule, optimiser, determinism,
streaming, NaN handling, units, clipping, errors, pickling and that it actually learns a spectral mapping."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import box_response

from geolift.errors import GeoliftError, GeoliftWarning, ModelError
from geolift.model import (  # internals checked against their references
    DISTILL_PIXELS,
    MEMBER_SEED_STRIDE,
    PRESETS,
    ExactNetwork,
    SpectraLift,
    SpectraLiftMLP,
    _FlatKerasAdam,
    _MeanAbsoluteError,
    distillation_pixels,
    distillation_stride,
    fold_msi_update,
    learning_rate_schedule,
    msi_update_gain,
)

# The network alone: these tests predict on the training cube's own grid (no super-resolution), and their claims
# (exactness, determinism, units) are the network's; the consistency step is tested in test_refine/test_api.
FAST = dict(steps=200, consistency=False, members=1)  # one network: the default's ensemble is tested apart


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_response(centers, fwhm, n_hsi: int) -> np.ndarray:
    """m x C response with Gaussian rows over band index, normalised to sum 1."""
    x = np.arange(n_hsi)[None, :]
    sigma = fwhm / 2.3548
    R = np.exp(-0.5 * ((x - np.asarray(centers, float)[:, None]) / sigma) ** 2)
    return R / R.sum(axis=1, keepdims=True)


def mixing_scene(n_hsi=40, shape=(16, 16), n_end=4, seed=0):
    """A linear-mixing cube (C, h, w): smooth random endmember spectra with random abundances (sum 1)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n_hsi)
    ends = []
    for _ in range(n_end):
        centers = rng.uniform(0, 1, 3)
        widths = rng.uniform(0.1, 0.3, 3)
        heights = rng.uniform(0.2, 1.0, 3)
        ends.append(0.05 + sum(h * np.exp(-0.5 * ((x - c) / w) ** 2) for c, w, h in zip(centers, widths, heights)))
    E = np.array(ends)  # (n_end, C)
    E = 0.9 * E / E.max()
    n = shape[0] * shape[1]
    A = rng.dirichlet(np.ones(n_end) * 0.7, size=n)  # (n, n_end)
    pixels = A @ E  # (n, C)
    return pixels.T.reshape(n_hsi, *shape).astype(np.float32), E


@pytest.fixture(scope="module")
def scene():
    cube, E = mixing_scene()
    R = gaussian_response([5, 15, 25, 35], 8, cube.shape[0])
    return cube, R, E


@pytest.fixture(scope="module")
def fitted(scene):
    cube, R, _ = scene
    return SpectraLift(**FAST, seed=3).fit(cube, R)


@pytest.fixture(scope="module")
def purer_hr_scene(scene):
    """(truth, HR-MSI) of 32 x 32 pixels of the scene's materials, purer than its LR mixtures: where a student must
    carry the members' mean beyond the LR pixels."""
    _, R, E = scene
    rng = np.random.default_rng(11)
    pure = rng.dirichlet(np.ones(len(E)) * 0.2, size=(32 * 32)) @ E
    truth = pure.T.reshape(-1, 32, 32).astype(np.float32)
    return truth, msi_of(truth, R)


def msi_of(cube, R):
    return np.tensordot(R, cube, axes=1).astype(np.float32)


# ---------------------------------------------------------------- architecture and initialisation
def test_architecture_matches_reference():
    net = SpectraLiftMLP(4, 218, hidden=64)
    layers = list(net.children())
    assert len(layers) == 7
    assert [tuple(layer.weight.shape) for layer in layers] == [(64, 4)] + [(64, 64)] * 5 + [(218, 64)]
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == (4 * 64 + 64) + 5 * (64 * 64 + 64) + (64 * 218 + 218) == 35290


def test_forward_uses_reference_residual_wiring():
    torch.manual_seed(1)
    net = SpectraLiftMLP(3, 5, hidden=8)
    x = torch.randn(6, 3)
    W = [(layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy()) for layer in net.children()]

    def dense(i, h, act=True):
        z = h @ W[i][0].T + W[i][1]
        return np.where(z > 0, z, 0.3 * z) if act else z

    h = x.numpy().astype(np.float64)
    x1 = dense(0, h)
    h = dense(1, x1) + x1
    h = dense(3, dense(2, h)) + h
    h = dense(5, dense(4, h)) + h
    expected = dense(6, h, act=False)
    np.testing.assert_allclose(net(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_keras_initialisation_glorot_uniform_and_zero_bias():
    net = SpectraLiftMLP(4, 100, hidden=64)
    net.reset_parameters_keras(torch.Generator().manual_seed(0))
    for layer in net.children():
        fan_out, fan_in = layer.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach().numpy()
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.9 * limit  # spans the whole Glorot interval
        assert abs(w.std() - limit / math.sqrt(3)) < 0.15 * limit / math.sqrt(3)
        assert np.all(layer.bias.detach().numpy() == 0)


def test_fitted_network_shapes(fitted, scene):
    cube, R, _ = scene
    assert fitted.n_bands_in == R.shape[0] == 4
    assert fitted.n_bands_out == cube.shape[0] == 40
    net = fitted.network()
    assert net.layer1.in_features == 4 and net.output_layer.out_features == 40
    assert len(fitted.history) == FAST["steps"]
    assert fitted.fit_seconds > 0
    assert fitted.n_train_pixels == 16 * 16


# ---------------------------------------------------------------- schedule and optimiser
def test_one_cycle_schedule_key_values():
    lr = learning_rate_schedule(2500, 1e-3, 1e-2, 1e-6, 0.3)
    assert lr.shape == (2500,)
    assert lr[0] == pytest.approx(1e-3 + 9e-3 / 750)  # step 1
    assert lr[748] == pytest.approx(1e-3 + 9e-3 * 749 / 750)  # step 749, still rising
    assert lr[749] == pytest.approx(1e-2)  # step 750 = 30 %: the peak
    assert int(np.argmax(lr)) == 749
    assert lr[-1] == pytest.approx(1e-6, rel=1e-9)  # last step
    assert lr[1624] == pytest.approx(1e-2 - (1e-2 - 1e-6) * 875 / 1750)  # halfway down
    assert np.all(np.diff(lr[:750]) > 0) and np.all(np.diff(lr[749:]) < 0)


def test_model_defaults_are_the_faithful_preset():
    model = SpectraLift(preset="spectralift")
    preset = PRESETS["spectralift"]
    assert (model.steps, model.hidden, model.lr_initial, model.lr_max, model.lr_final, model.warmup) == (
        preset["steps"], preset["hidden"], preset["lr_initial"], preset["lr_max"], preset["lr_final"],
        preset["warmup"])
    assert (model.steps, model.hidden, model.lr_initial, model.lr_max, model.lr_final) == (
        2500, 64, 1e-3, 1e-2, 1e-6)
    np.testing.assert_array_equal(model.learning_rates(), learning_rate_schedule(2500, 1e-3, 1e-2, 1e-6, 0.3))


def test_optimizer_follows_keras_adam():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = _FlatKerasAdam(net)
    theta = opt.flat.double().numpy().copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    x = torch.randn(5, 3)
    for t, lr in enumerate([1e-2, 5e-3, 2e-2], start=1):
        opt.zero_grad()
        (net(x) ** 2).mean().backward()
        g = opt.grad.double().numpy().copy()
        alpha = lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        m = m + (g - m) * 0.1
        v = v + (g * g - v) * 0.001
        theta = theta - m * alpha / (np.sqrt(v) + 1e-7)  # Keras: epsilon added before bias correction
        opt.step(alpha)
        np.testing.assert_allclose(opt.flat.numpy(), theta, rtol=1e-5, atol=1e-7)
        # the module's own parameters are views of the flat buffer, so they moved too
        np.testing.assert_allclose(net.weight.detach().numpy().ravel(), theta[:6], rtol=1e-5, atol=1e-7)


def test_mean_absolute_error_matches_torch_l1_loss():
    torch.manual_seed(0)
    pred = torch.randn(50, 7, requires_grad=True)
    target = torch.randn(50, 7)
    target[0, 0] = pred[0, 0].item()  # a zero difference has zero gradient in both
    ours = _MeanAbsoluteError.apply(pred, target)
    (grad_ours,) = torch.autograd.grad(3.0 * ours, pred)
    ref = torch.nn.functional.l1_loss(pred, target)
    (grad_ref,) = torch.autograd.grad(3.0 * ref, pred)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(grad_ours, grad_ref)


@pytest.mark.reproducible
# ---------------------------------------------------------------- determinism and streaming
def test_same_seed_is_bit_identical_and_other_seed_differs(scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    a = SpectraLift(**FAST, seed=7).fit(cube, R)
    b = SpectraLift(**FAST, seed=7).fit(cube, R)
    c = SpectraLift(**FAST, seed=8).fit(cube, R)
    np.testing.assert_array_equal(a.predict(msi), b.predict(msi))
    assert a.history == b.history
    assert not np.array_equal(a.predict(msi), c.predict(msi))


def test_fit_leaves_global_random_state_alone(scene):
    cube, R, _ = scene
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    SpectraLift(steps=5).fit(cube, R)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


@pytest.mark.reproducible
def test_blockwise_prediction_equals_whole(fitted, scene):
    cube, R, _ = scene
    rng = np.random.default_rng(5)
    hr = msi_of(np.repeat(np.repeat(cube, 3, axis=1), 3, axis=2), R)  # (4, 48, 48)
    hr = hr + rng.normal(0, 0.01, hr.shape).astype(np.float32)
    hr[:, 7, 9] = np.nan
    hr[2, 30, 30] = np.nan
    whole = fitted.predict(hr)
    # row strips of uneven heights, including a single row
    strips = [fitted.predict(hr[:, a:b]) for a, b in [(0, 1), (1, 17), (17, 40), (40, 48)]]
    np.testing.assert_array_equal(np.concatenate(strips, axis=1), whole)
    # 2-D tiles
    tile = fitted.predict(hr[:, 5:21, 3:30])
    np.testing.assert_array_equal(tile, whole[:, 5:21, 3:30])
    # single pixels and tiny batches through predict_pixels
    pixels = hr.reshape(4, -1).T
    flat_whole = whole.reshape(whole.shape[0], -1).T
    for a, b in [(0, 1), (100, 102), (500, 503), (1000, 1013)]:
        np.testing.assert_array_equal(fitted.predict_pixels(pixels[a:b]), flat_whole[a:b])
    # a different internal chunk size changes nothing
    small_chunks = pickle.loads(pickle.dumps(fitted))
    small_chunks.chunk_pixels = 37
    np.testing.assert_array_equal(small_chunks.predict(hr), whole)


@pytest.mark.reproducible
def test_exact_inference_matches_the_training_network_and_ignores_the_batch():
    """The inference network (exact products) computes the training network's forward pass to float32 rounding,
    and each pixel's result is the same bits whatever else is in the call (order, count, a single pixel)."""
    net = SpectraLiftMLP(4, 30, generator=torch.Generator().manual_seed(3))
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    exact = ExactNetwork(state)
    x = torch.rand(700, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        expected = net(x.float()).T
    with torch.inference_mode():
        whole = exact(x)
        assert whole.shape == (30, 700) and whole.dtype == torch.float32
        np.testing.assert_allclose(whole.numpy(), expected.numpy(), rtol=0, atol=2e-6)
        image = np.full((30, 1000), np.nan, np.float32)  # written straight into a band-first image's columns
        exact(x, torch.from_numpy(image[:, 200:900]))
        np.testing.assert_array_equal(image[:, 200:900], whole.numpy())
        assert np.isnan(image[:, :200]).all() and np.isnan(image[:, 900:]).all()
        order = torch.randperm(700, generator=torch.Generator().manual_seed(5))
        assert torch.equal(exact(x[order]), whole[:, order])
        for a, b in [(0, 1), (1, 2), (5, 13), (100, 357), (699, 700)]:
            assert torch.equal(exact(x[a:b]), whole[:, a:b])


# ---------------------------------------------------------------- NaN handling
def test_nan_pixels_are_excluded_from_training(scene):
    cube, R, _ = scene
    holed = cube.copy()
    holed[:, 0, :5] = np.nan  # whole-pixel holes
    holed[3, 10, 10] = np.nan  # a single bad band spoils its pixel
    valid = np.all(np.isfinite(holed), axis=0)
    compact = cube[:, valid][:, None, :]  # the valid pixels only, same order, as a 1-row image
    a = SpectraLift(**FAST).fit(holed, R)
    b = SpectraLift(**FAST).fit(compact, R)
    assert a.n_train_pixels == b.n_train_pixels == valid.sum() == 16 * 16 - 6
    assert a.data_range == b.data_range
    assert np.all(np.isfinite(a.history))
    msi = msi_of(cube, R)
    np.testing.assert_array_equal(a.predict(msi), b.predict(msi))


def test_nan_msi_pixels_give_nan_in_every_band(fitted, scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    msi[:, 2, 3] = np.nan
    msi[1, 5, 6] = np.nan
    msi[0, 7, 7] = np.inf
    out = fitted.predict(msi)
    assert out.dtype == np.float32 and out.shape == cube.shape
    bad = np.zeros(cube.shape[1:], bool)
    bad[2, 3] = bad[5, 6] = bad[7, 7] = True
    assert np.all(np.isnan(out[:, bad]))
    assert np.all(np.isfinite(out[:, ~bad]))
    all_nan = fitted.predict_pixels(np.full((3, 4), np.nan))
    assert all_nan.shape == (3, 40) and np.all(np.isnan(all_nan))


# ---------------------------------------------------------------- units, scaling and clipping
def test_scaled_integer_units_give_scaled_results(fitted, scene):
    cube, R, _ = scene
    big = SpectraLift(**FAST, seed=3).fit(cube.astype(np.float64) * 10000, R)
    lo, hi = fitted.data_range
    assert big.data_range == pytest.approx((lo * 10000, hi * 10000))
    msi = msi_of(cube, R)
    small_out = fitted.predict(msi)
    big_out = big.predict(msi.astype(np.float64) * 10000)
    # the scaled training data agree up to float32 rounding, so the fits agree closely, not bit for bit
    np.testing.assert_allclose(big_out, small_out * 10000, rtol=0, atol=10000 * 1e-4)
    assert np.mean(np.abs(big_out - small_out * 10000)) < 10000 * 1e-5
    # integer input arrays work the same way
    as_uint16 = SpectraLift(**FAST, seed=3).fit(np.round(cube * 10000).astype(np.uint16), R)
    assert as_uint16.predict(np.round(msi * 10000).astype(np.uint16)).dtype == np.float32


def test_msi_scaling_is_exact_for_rows_not_summing_to_one():
    """With an offset data range and rows summing to 3, the LR-MSI must reproduce the training fit."""
    cube, _ = mixing_scene(n_hsi=30, shape=(12, 12), seed=2)
    cube = 1000 + 4000 * cube  # units with a large offset: lo is far from 0
    R = 3.0 * box_response(3, 30)
    model = SpectraLift(steps=300, consistency=False, members=1).fit(cube, R)
    lo, hi = model.data_range
    pred = model.predict(msi_of(cube, R).astype(np.float64))
    mae_scaled = np.mean(np.abs(pred - cube)) / (hi - lo)
    assert mae_scaled <= model.history[-1] * 1.05 + 1e-4  # clipping can only help
    assert mae_scaled < 0.05


def test_value_range_sets_scaling_and_clip_bounds(scene):
    cube, R, _ = scene
    model = SpectraLift(**FAST, value_range=(0, 1)).fit(cube, R)
    assert model.data_range == (0.0, 1.0)
    extreme = np.concatenate([np.full((5, 4), 50.0), np.full((5, 4), -50.0)])
    out = model.predict_pixels(extreme)
    assert out.max() == np.float32(1.0) and out.min() == np.float32(0.0)  # clipped exactly at the bounds


def test_faithful_outputs_are_clipped_to_the_lr_hsi_range(scene):
    cube, R, _ = scene
    units = cube * 10000
    model = SpectraLift(**FAST, preset="spectralift").fit(units, R)
    lo, hi = float(np.nanmin(units)), float(np.nanmax(units))
    assert model.data_range == (lo, hi) and model.output_range == (lo, hi)
    rng = np.random.default_rng(0)
    wild = rng.uniform(-5 * hi, 5 * hi, size=(4, 20, 20))
    out = model.predict(wild)
    assert out.min() >= np.float32(lo) and out.max() <= np.float32(hi)
    assert np.any(out == np.float32(hi)) and np.any(out == np.float32(lo))  # clipping did happen


def test_default_outputs_are_clipped_to_zero_and_the_lr_hsi_maximum(scene):
    """Reflectance and radiance cannot be negative, and an HR pixel may be darker than every (mixed) LR pixel:
    the default clips to [0, hi], whatever the LR-HSI's minimum."""
    cube, R, _ = scene
    units = cube * 10000
    model = SpectraLift(**FAST).fit(units, R)
    lo, hi = float(np.nanmin(units)), float(np.nanmax(units))
    assert lo > 0 and model.data_range == (lo, hi) and model.output_range == (0.0, hi)
    wild = np.random.default_rng(0).uniform(-5 * hi, 5 * hi, size=(4, 20, 20))
    out = model.predict(wild)
    assert out.min() == np.float32(0.0) and out.max() == np.float32(hi)  # clipped exactly at both bounds
    assert np.any((out > 0) & (out < lo))  # values the faithful preset's clip would have raised to lo
    noisy = SpectraLift(**FAST).fit(units - 2 * lo, R)  # an LR-HSI whose noise dips below 0
    assert noisy.data_range[0] < 0 and noisy.output_range == (0.0, noisy.data_range[1])
    assert noisy.predict(wild).min() == np.float32(0.0)
    stated = SpectraLift(**FAST, value_range=(-1000.0, 20000.0)).fit(units, R)  # a range the caller states is kept
    assert stated.output_range == (-1000.0, 20000.0)


# ---------------------------------------------------------------- errors
def test_predict_before_fit_raises():
    with pytest.raises(ModelError, match="not fitted"):
        SpectraLift().predict(np.zeros((4, 2, 2)))
    with pytest.raises(ModelError, match="not fitted"):
        SpectraLift().predict_pixels(np.zeros((2, 4)))


def test_shape_errors(fitted, scene):
    cube, R, _ = scene
    model = SpectraLift(steps=2)
    with pytest.raises(ModelError, match="bands, rows, cols"):
        model.fit(cube[0], R)
    with pytest.raises(ModelError, match="2-D"):
        model.fit(cube, R[0])
    with pytest.raises(ModelError, match="40 bands"):
        model.fit(cube, R[:, :-1])
    with pytest.raises(ModelError, match="NaN or infinite"):
        bad_R = R.copy()
        bad_R[0, 0] = np.nan
        model.fit(cube, bad_R)
    with pytest.raises(ModelError, match="3 bands but the model was fitted with 4"):
        fitted.predict(np.zeros((3, 5, 5)))
    with pytest.raises(ModelError, match="bands, rows, cols"):
        fitted.predict(np.zeros((4, 5)))
    with pytest.raises(ModelError, match=r"\(n, 4\)"):
        fitted.predict_pixels(np.zeros((5, 3)))


def test_data_errors(scene):
    cube, R, _ = scene
    with pytest.raises(ModelError, match="no valid pixels"):
        SpectraLift(steps=2).fit(np.full_like(cube, np.nan), R)
    few = np.full_like(cube, np.nan)
    few[:, 0, :5] = cube[:, 0, :5]
    with pytest.raises(ModelError, match="only 5 valid pixels"):
        SpectraLift(steps=2).fit(few, R)
    with pytest.raises(ModelError, match="same value"):
        SpectraLift(steps=2).fit(np.full_like(cube, 0.3), R)
    assert issubclass(ModelError, GeoliftError)


def test_parameter_errors():
    with pytest.raises(ModelError, match="preset"):
        SpectraLift(preset="fancy")
    with pytest.raises(ModelError, match="value_range"):
        SpectraLift(value_range=(1, 0))
    with pytest.raises(ModelError, match="value_range"):
        SpectraLift(value_range="abc")
    with pytest.raises(ModelError, match="steps"):
        SpectraLift(steps=0)
    with pytest.raises(ModelError, match="warmup"):
        SpectraLift(warmup=1.0)
    with pytest.raises(ModelError, match="device"):
        SpectraLift(device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_raises_and_auto_falls_back(scene):
    with pytest.raises(ModelError, match="CUDA is not available"):
        SpectraLift(device="cuda")
    cube, R, _ = scene
    msi = msi_of(cube, R)
    auto = SpectraLift(steps=20, device="auto", consistency=False).fit(cube, R, hr_msi=msi)
    cpu = SpectraLift(steps=20, device="cpu", consistency=False).fit(cube, R, hr_msi=msi)
    np.testing.assert_array_equal(auto.predict(msi), cpu.predict(msi))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fits_and_predicts_like_cpu(fitted, scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    on_gpu = pickle.loads(pickle.dumps(fitted))
    on_gpu.device = "cuda"  # same weights, inference on the GPU: only float rounding may differ
    np.testing.assert_allclose(on_gpu.predict(msi), fitted.predict(msi), rtol=0, atol=1e-5)
    gpu = SpectraLift(**FAST, device="cuda").fit(cube, R)
    assert gpu.history[-1] < 0.2 * gpu.history[0]


# ---------------------------------------------------------------- pickling and progress
def test_pickle_round_trip_gives_identical_predictions(fitted, scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    before = fitted.predict(msi)  # builds the cached network, which must not break pickling
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.predict(msi), before)
    assert clone.history == fitted.history and clone.data_range == fitted.data_range


def test_progress_callback_reports_training_and_prediction(scene):
    cube, R, _ = scene
    calls = []
    model = SpectraLift(steps=50, chunk_pixels=100, consistency=False, members=1)  # one network: the next test
    model.fit(cube, R, progress=lambda *a: calls.append(a))                       # has the student's bar
    train = [c for c in calls if c[2] == "train"]
    assert train[0] == (0, 50, "train") and train[-1] == (50, 50, "train")
    assert [c[0] for c in train] == sorted(c[0] for c in train)
    calls.clear()
    model.predict(msi_of(cube, R), progress=lambda *a: calls.append(a))
    assert calls == [(1, 3, "predict"), (2, 3, "predict"), (3, 3, "predict")]  # 256 pixels in chunks of 100


def test_progress_of_a_fit_with_a_student_is_one_bar_over_the_members_and_the_student(scene):
    cube, R, _ = scene
    calls = []
    model = SpectraLift(steps=50, members=3, consistency=False)
    model.fit(cube, R, hr_msi=msi_of(cube, R), progress=lambda *a: calls.append(a))
    total = 50 + model.student_steps
    assert model.student_steps > 0 and {c[1:] for c in calls} == {(total, "train")}
    assert calls[0][0] == 0 and calls[-1][0] == total
    assert any(c[0] == 50 for c in calls)  # the members' last step, before the student's first
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_num_threads_applies_during_work_and_is_restored(scene):
    cube, R, _ = scene
    seen = []
    before = torch.get_num_threads()
    model = SpectraLift(steps=3, num_threads=2, consistency=False)
    model.fit(cube, R, hr_msi=msi_of(cube, R), progress=lambda *a: seen.append(torch.get_num_threads()))
    model.predict(msi_of(cube, R), progress=lambda *a: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == before
    with pytest.raises(ModelError, match="num_threads"):
        SpectraLift(num_threads=0)


# ---------------------------------------------------------------- it learns
def test_learns_linear_mixing_and_beats_mean_spectrum(scene):
    cube, R, E = scene
    # held-out pixels: new abundances of the same materials, seen only through their MSI
    rng = np.random.default_rng(99)
    held_out = rng.dirichlet(np.ones(E.shape[0]) * 0.7, size=400) @ E  # (400, C)
    msi_pixels = (held_out @ R.T).astype(np.float32)
    model = SpectraLift(steps=500, seed=0).fit(cube, R, hr_pixels=msi_pixels)  # the student learns at these pixels
    assert model.history[-1] < 0.2 * model.history[0]
    pred = model.predict_pixels(msi_pixels)
    rmse_model = np.sqrt(np.mean((pred - held_out) ** 2))
    mean_spectrum = np.nanmean(cube.reshape(cube.shape[0], -1), axis=1)
    rmse_mean = np.sqrt(np.mean((mean_spectrum[None, :] - held_out) ** 2))
    assert rmse_model < 0.05 * rmse_mean, (rmse_model, rmse_mean)  # measured ratio ~0.015



# ----------------------------------------------------------------------------- presets and pixel sampling
def test_presets_name_their_recipes():
    faithful = SpectraLift(preset="spectralift")
    assert faithful.max_train_pixels is None and faithful.consistency is False
    improved = SpectraLift(preset="geolift")
    assert improved.max_train_pixels == 2048 and improved.consistency is True
    assert (faithful.steps, faithful.hidden, faithful.lr_max) == (2500, 64, 1e-2)  # the paper's
    assert (improved.steps, improved.hidden, improved.lr_max) == (833, 64, 1e-2)  # a third of 2500 each: PRESETS
    assert (improved.members, improved.distill, improved.student_steps) == (3, 0.36, 300)  # three and a student
    assert improved.student_hidden is None  # as wide as the members, fine-tuned from member 0: see PRESETS
    assert improved.brightness_jitter == 0.0  # measured with the ensemble: see PRESETS
    assert SpectraLift(members=1).student_steps == 0  # one network has no student
    assert (faithful.members, faithful.distills) == (1, False)
    assert SpectraLift(preset="geolift", steps=10, max_train_pixels=None).steps == 10  # explicit values win
    with pytest.raises(ModelError, match="max_train_pixels"):
        SpectraLift(max_train_pixels=0)


def test_geolift_preset_is_exactly_full_batch_below_its_sample_cap(scene):
    cube, R, _ = scene
    a = SpectraLift(**FAST, seed=4, preset="spectralift").fit(cube, R)
    # the geolift recipe's sampling path only: its brightness jitter, snapshot averaging, clip at 0 and MSI update
    # are tested apart
    b = SpectraLift(**FAST, seed=4, preset="geolift", brightness_jitter=0.0, snapshot_fraction=0.0,
                    nonnegative=False, msi_update=False).fit(cube, R)
    assert a.history == b.history
    np.testing.assert_array_equal(a.predict(msi_of(cube, R)), b.predict(msi_of(cube, R)))


def test_sampled_training_is_deterministic_and_still_learns(scene):
    cube, R, _ = scene
    a = SpectraLift(steps=300, seed=4, max_train_pixels=64, consistency=False, members=1).fit(cube, R)
    b = SpectraLift(steps=300, seed=4, max_train_pixels=64, consistency=False, members=1).fit(cube, R)
    full = SpectraLift(steps=300, seed=4, max_train_pixels=None, consistency=False, members=1).fit(cube, R)
    msi = msi_of(cube, R)
    np.testing.assert_array_equal(a.predict(msi), b.predict(msi))
    assert a.history != full.history  # it really sampled
    assert a.n_train_pixels == 256
    err_sampled = np.mean(np.abs(a.predict(msi) - cube))
    err_full = np.mean(np.abs(full.predict(msi) - cube))
    assert err_sampled < 1.5 * err_full + 2e-3, (err_sampled, err_full)


def test_stratified_sampler_draws_proportional_quotas_of_every_cluster():
    from geolift.model import _StratifiedSampler

    rng = np.random.default_rng(0)
    # three well separated clusters of very different sizes
    points = np.concatenate([rng.normal(0, 0.01, (9000, 3)), rng.normal(1, 0.01, (900, 3)),
                             rng.normal(-1, 0.01, (100, 3))])
    sampler = _StratifiedSampler(points, size=500, seed=1, strata=3)
    assert sampler.quota.sum() == 500
    assert sorted(sampler.quota.tolist()) == [5, 45, 450]
    draws = np.concatenate([sampler.draw() for _ in range(20)])
    assert draws.min() >= 0 and draws.max() < len(points)
    share_rare = np.mean(draws >= 9900)
    assert share_rare == pytest.approx(0.01)  # exactly its quota in every draw, not by luck


# ---------------------------------------------------------------- geolift recipe: brightness jitter, snapshots
def test_snapshot_averaging_returns_the_mean_of_the_last_steps_weights(scene):
    """snapshot_fraction=1 over 3 steps must give exactly the mean of the three steps' weights."""
    cube, R, _ = scene
    common = dict(steps=3, seed=5, max_train_pixels=None, brightness_jitter=0.0, members=1)
    plain = SpectraLift(**common, snapshot_fraction=0.0)
    averaged = SpectraLift(**common, snapshot_fraction=1.0).fit(cube, R)
    weights = []  # the plain 3-step run, recording the weights after each step
    original_step = _FlatKerasAdam.step

    def recording_step(self, step_size):
        original_step(self, step_size)
        weights.append(self.flat.clone())

    _FlatKerasAdam.step = recording_step
    try:
        plain.fit(cube, R)
    finally:
        _FlatKerasAdam.step = original_step
    expected = torch.stack(weights).mean(0)
    got = torch.cat([torch.from_numpy(v).reshape(-1) for v in averaged._state.values()])
    assert len(weights) == 3
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    last = torch.cat([torch.from_numpy(v).reshape(-1) for v in plain._state.values()])
    assert not torch.allclose(got, last)  # it really averaged, not just the final weights


def test_brightness_jitter_is_deterministic_changes_training_and_keeps_quality(scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    one = dict(steps=300, seed=4, snapshot_fraction=0.0, consistency=False, members=1)
    a = SpectraLift(brightness_jitter=0.5, **one).fit(cube, R)
    b = SpectraLift(brightness_jitter=0.5, **one).fit(cube, R)
    plain = SpectraLift(brightness_jitter=0.0, **one).fit(cube, R)
    np.testing.assert_array_equal(a.predict(msi), b.predict(msi))
    assert a.history != plain.history
    err_jitter = np.mean(np.abs(a.predict(msi) - cube))
    err_plain = np.mean(np.abs(plain.predict(msi) - cube))
    assert err_jitter < 1.5 * err_plain + 2e-3, (err_jitter, err_plain)


def test_brightness_jitter_keeps_the_shape_of_darker_pixels_than_any_training_pixel(scene):
    """Pixels at 40 % of the brightest training pixel's brightness: the jittered fit's spectra keep their shape."""
    cube, R, _ = scene
    dark = 0.4 * cube  # darker than (most of) the training data, same materials
    msi = msi_of(dark, R)

    def mean_angle(model):
        pred = model.predict(msi).reshape(cube.shape[0], -1)
        truth = dark.reshape(cube.shape[0], -1)
        cos = np.sum(pred * truth, 0) / (np.linalg.norm(pred, axis=0) * np.linalg.norm(truth, axis=0) + 1e-12)
        return float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())

    one = dict(steps=400, seed=4, snapshot_fraction=0.0, consistency=False, members=1)
    jittered = SpectraLift(brightness_jitter=0.7, **one).fit(cube, R)
    plain = SpectraLift(brightness_jitter=0.0, **one).fit(cube, R)
    assert mean_angle(jittered) < mean_angle(plain), (mean_angle(jittered), mean_angle(plain))


def test_geolift_recipe_values_are_checked():
    with pytest.raises(ModelError, match="brightness_jitter"):
        SpectraLift(brightness_jitter=1.0)
    with pytest.raises(ModelError, match="snapshot_fraction"):
        SpectraLift(snapshot_fraction=-0.1)
    assert PRESETS["spectralift"]["brightness_jitter"] == 0.0 and PRESETS["spectralift"]["snapshot_fraction"] == 0.0


# ---------------------------------------------------------------- geolift recipe: the MSI update
def test_msi_update_gain_is_the_regularised_minimum_variance_step():
    cube, _ = mixing_scene(n_end=6, seed=1)  # six materials: their MSI view varies in all four bands
    R = gaussian_response([5, 15, 25, 35], 8, cube.shape[0])
    target = cube.reshape(cube.shape[0], -1).T.astype(np.float64)
    S = np.cov(target, rowvar=False)
    seen = R @ S @ R.T
    weight = 1e-3 * np.trace(seen) / R.shape[0]
    G = msi_update_gain(target, R, regularization=1e-3)
    np.testing.assert_allclose(G, S @ R.T @ np.linalg.inv(seen + weight * np.eye(4)), rtol=1e-7, atol=1e-12)
    # without a weight the step lands exactly on R·x = m
    np.testing.assert_allclose(R @ msi_update_gain(target, R, regularization=0.0), np.eye(4), atol=1e-7)
    assert msi_update_gain(np.ones((10, cube.shape[0])), R) is None  # nothing varies: no step


def test_msi_update_makes_purer_pixels_than_any_training_pixel_agree_with_their_msi():
    """Every training pixel is a mixture (no material above 56 %); the pure materials are outside what the network
    saw. The update moves its spectra for them towards agreement with their MSI pixels, and towards the truth (on
    this machine: misfit 0.067 -> 0.061, error 0.740 -> 0.717); the network is the same."""
    _, E = mixing_scene(n_end=6, seed=1)
    abundances = np.random.default_rng(1).dirichlet(np.full(6, 2.0), size=256)
    assert abundances.max() < 0.6
    cube = (abundances @ E).T.reshape(-1, 16, 16).astype(np.float32)
    R = gaussian_response([5, 15, 25, 35], 8, cube.shape[0])
    common = dict(steps=300, seed=4, consistency=False, members=1)
    updated = SpectraLift(**common).fit(cube, R)
    plain = SpectraLift(**common, msi_update=False).fit(cube, R)
    assert updated.msi_update and not plain.msi_update and not SpectraLift(preset="spectralift").msi_update
    assert updated.history == plain.history
    m = (E @ R.T).astype(np.float32)
    a, b = updated.predict_pixels(m), plain.predict_pixels(m)

    def misfit(x):
        return np.linalg.norm(x @ R.T - m) / np.linalg.norm(m)

    assert misfit(a) < 0.95 * misfit(b), (misfit(a), misfit(b))
    assert np.linalg.norm(a - E) < np.linalg.norm(b - E), (np.linalg.norm(a - E), np.linalg.norm(b - E))
    clone = pickle.loads(pickle.dumps(updated))  # the gain travels with the model
    np.testing.assert_array_equal(clone.predict_pixels(m), a)


@pytest.mark.reproducible
def test_msi_update_folded_into_the_output_layer_is_the_update_and_exact_per_pixel():
    """The exact network with the folded output layer computes x + G(m - R·x) of the plain network's x (to float32
    rounding), and each pixel's result is the same bits whatever else is in the call."""
    net = SpectraLiftMLP(4, 30, generator=torch.Generator().manual_seed(3))
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(7)
    R, G = rng.uniform(0, 0.1, (4, 30)), rng.normal(0, 1, (30, 4))
    plain, updated = ExactNetwork(state), ExactNetwork(state, output_layer=fold_msi_update(state, R, G))
    x = torch.rand(500, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.inference_mode():
        before, whole = plain(x).numpy().astype(np.float64), updated(x)
        expected = before + G @ (x.numpy().T - R @ before)
        np.testing.assert_allclose(whole.numpy(), expected, rtol=0, atol=2e-5)
        assert np.abs(expected - before).max() > 1e-2  # the update is not nothing
        order = torch.randperm(500, generator=torch.Generator().manual_seed(5))
        assert torch.equal(updated(x[order]), whole[:, order])
        for a, b in [(0, 1), (3, 4), (10, 77), (250, 500)]:
            assert torch.equal(updated(x[a:b]), whole[:, a:b])


# ---------------------------------------------------------------- ensembles: members trained side by side
def test_members_are_the_independent_fits_their_seeds_give(scene):
    """Member k of members=2 trains as a single fit with seed + k * stride would: its own initialisation, pixel
    sample and brightness jitter (10 steps, so the batched products' rounding has not yet grown)."""
    cube, R, _ = scene
    common = dict(steps=10, consistency=False, max_train_pixels=100, brightness_jitter=0.25)
    ensemble = SpectraLift(seed=2, members=2, distill=0.0, **common).fit(cube, R)
    singles = [SpectraLift(seed=2 + k * MEMBER_SEED_STRIDE, members=1, **common).fit(cube, R) for k in range(2)]
    for name, stacked in ensemble._state.items():
        assert stacked.shape == (2, *singles[0]._state[name].shape)
        for k, single in enumerate(singles):
            np.testing.assert_allclose(stacked[k], single._state[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.allclose(ensemble._state["layer1.weight"][0], ensemble._state["layer1.weight"][1])
    np.testing.assert_allclose(ensemble.history, np.mean([s.history for s in singles], axis=0), rtol=1e-4)
    member = ensemble.network(member=1)
    torch.testing.assert_close(member.layer3.weight.detach(), torch.from_numpy(singles[1]._state["layer3.weight"]),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.reproducible
def test_ensemble_network_is_the_members_mean_and_exact_per_pixel():
    """The ensemble's exact network gives the mean of its members' outputs (to float32 rounding), with and without
    the folded MSI update, and a pixel's bits do not depend on the rest of the call."""
    nets = [SpectraLiftMLP(4, 30, generator=torch.Generator().manual_seed(s)) for s in (3, 8)]
    states = [{k: v.detach().numpy().copy() for k, v in net.state_dict().items()} for net in nets]
    stacked = {k: np.stack([s[k] for s in states]) for k in states[0]}
    rng = np.random.default_rng(7)
    R, G = rng.uniform(0, 0.1, (4, 30)), rng.normal(0, 1, (30, 4))
    x = torch.rand(500, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.inference_mode():
        for folded in (False, True):
            def output(state, folded=folded):
                return ExactNetwork(state, output_layer=fold_msi_update(state, R, G) if folded else None)

            mean = sum(output(state)(x).numpy().astype(np.float64) for state in states) / 2
            ensemble = output(stacked)
            whole = ensemble(x)
            np.testing.assert_allclose(whole.numpy(), mean, rtol=0, atol=2e-5)  # as the update test
            assert np.abs(output(states[0])(x).numpy() - mean).max() > 1e-2  # the members differ
            order = torch.randperm(500, generator=torch.Generator().manual_seed(5))
            assert torch.equal(ensemble(x[order]), whole[:, order])
            for a, b in [(0, 1), (3, 4), (10, 77), (250, 500)]:
                assert torch.equal(ensemble(x[a:b]), whole[:, a:b])


def test_ensemble_predicts_pickles_and_says_what_it_is(scene):
    cube, R, _ = scene
    msi = msi_of(cube, R)
    model = SpectraLift(steps=200, seed=1, members=3, distill=0.0).fit(cube, R)  # no student: every member runs
    single = SpectraLift(steps=200, seed=1, members=1).fit(cube, R)
    got = model.predict(msi, consistency=False)
    assert got.shape == cube.shape and np.all(np.isfinite(got))
    assert float(np.abs(got - cube).mean()) < 2 * float(np.abs(single.predict(msi, consistency=False) - cube).mean())
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(msi, consistency=False), got)
    with pytest.raises(ModelError, match="ensemble of 3 networks"):
        model.network()
    with pytest.raises(ModelError, match="member must be in"):
        model.network(member=3)
    with pytest.raises(ModelError, match="members must be at least 1"):
        SpectraLift(members=0)
    assert PRESETS["spectralift"]["members"] == 1  # the faithful recipe stays one network


# ---------------------------------------------------------------- the ensemble's one-network student
def test_distillation_grid_depends_on_the_shape_alone_and_keeps_under_its_limit():
    for height, width in [(64, 128), (100, 100), (3000, 3000), (91, 92), (1, 50000), (7, 5)]:
        step = distillation_stride(height, width)
        assert -(-height // step) * -(-width // step) <= DISTILL_PIXELS
        if step > 1:  # the smallest such step
            assert -(-height // (step - 1)) * -(-width // (step - 1)) > DISTILL_PIXELS
    cube = np.arange(2 * 100 * 100, dtype=np.float32).reshape(2, 100, 100)
    pixels = distillation_pixels(cube)
    np.testing.assert_array_equal(pixels, cube[:, ::2, ::2].reshape(2, -1).T)


def test_student_replaces_the_ensemble_by_one_network_that_keeps_its_quality(scene, purer_hr_scene):
    """With ``distill`` an ensemble ends as one network, trained on the LR pairs and the members' mean at the
    HR pixels: one network's inference, about the ensemble's error, and the same student whether the HR-MSI comes
    to ``fit`` or to the first ``predict``."""
    cube, R, _ = scene
    truth, msi = purer_hr_scene
    common = dict(steps=150, seed=1, consistency=False)
    teacher = SpectraLift(members=3, distill=0.0, **common).fit(cube, R)
    given = SpectraLift(members=3, distill=1.0, **common).fit(cube, R, hr_msi=msi)
    assert given.distilled and not given.awaiting_student
    assert np.ndim(given._state["layer1.weight"]) == 2 and given.network().layer1.weight.shape[0] == 64
    lazy = SpectraLift(members=3, distill=1.0, **common).fit(cube, R)
    assert lazy.awaiting_student
    with pytest.warns(GeoliftWarning, match="student is learning"):  # the network alone: perhaps one tile
        got = lazy.predict(msi)
    assert lazy.distilled
    np.testing.assert_array_equal(got, given.predict(msi))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(given)).predict(msi), got)
    error = float(np.abs(got - truth).mean())
    assert error < 1.25 * float(np.abs(teacher.predict(msi) - truth).mean())
    assert np.abs(got - teacher.predict(msi)).max() > 0  # a network of its own, not the teacher
    assert (given.student_steps, SpectraLift(steps=1000, members=3, distill=0.36).student_steps) == (150, 360)
    with pytest.raises(ModelError, match="distill must be in"):
        SpectraLift(distill=-1)
    with pytest.raises(ModelError, match="student_hidden must be at least 1"):
        SpectraLift(student_hidden=0)
    assert not SpectraLift(members=1, distill=0.5).distills  # one network has nothing to distil


def test_a_narrower_student_trains_afresh_at_its_own_width(scene, purer_hr_scene):
    """``student_hidden`` narrower than the members: the student is one network of that width (what predicts is
    that network, about a third of the multiply-adds per pixel at 32 instead of 64 wide), trained from its own
    initialisation for ``distill`` of the steps, the same whether the HR-MSI comes to ``fit`` or to the first
    ``predict``; and it learned the spectra, not a flat mean."""
    cube, R, _ = scene
    truth, msi = purer_hr_scene
    common = dict(steps=150, seed=1, consistency=False, members=3, distill=1.0, student_hidden=32)
    given = SpectraLift(**common).fit(cube, R, hr_msi=msi)
    net = given.network()
    assert given.distilled and net.layer1.weight.shape == (32, R.shape[0])
    assert net.output_layer.weight.shape == (cube.shape[0], 32)
    assert given._inference_network()._hidden == 32
    assert len(given.history) == 150 + given.student_steps == 300
    lazy = SpectraLift(**common).fit(cube, R)
    with pytest.warns(GeoliftWarning, match="student is learning"):  # the network alone: perhaps one tile
        got = lazy.predict(msi)
    np.testing.assert_array_equal(got, given.predict(msi))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(given)).predict(msi), got)
    flat = np.abs(cube.reshape(cube.shape[0], -1).mean(axis=1)[:, None, None] - truth).mean()
    assert float(np.abs(got - truth).mean()) < 0.2 * flat


def test_a_student_left_to_the_first_prediction_says_so_unless_that_is_the_scene(scene):
    """Fitted without ``hr_msi``, the student learns from the first prediction's input. With the consistency step
    that input covers the LR-HSI's area (the scene itself): logged. The network alone on an image, or pixels,
    may be one tile of a larger image: warned, since every later call uses that student. A call refused for its
    shape trains nothing."""
    cube, R, _ = scene
    msi = msi_of(cube, R)
    hr = np.kron(msi, np.ones((1, 2, 2), np.float32))  # the LR-HSI's area at twice the resolution
    common = dict(steps=20, members=2, distill=0.5)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        whole = SpectraLift(**common).fit(cube, R)
        whole.predict(hr)
    assert whole.distilled and not [w for w in seen if "student" in str(w.message)]
    tile = SpectraLift(**common, consistency=False).fit(cube, R)
    with pytest.warns(GeoliftWarning, match="student is learning the members' mean from this call's 8 x 8 px image"):
        tile.predict(msi[:, :8, :8])
    assert tile.distilled
    pixels = SpectraLift(**common, consistency=False).fit(cube, R)
    with pytest.warns(GeoliftWarning, match="from this call's 10 pixels alone"):
        pixels.predict_pixels(msi.reshape(msi.shape[0], -1).T[:10])
    refused = SpectraLift(**common).fit(cube, R)
    with pytest.raises(ModelError, match="not the LR-HSI's area"):
        refused.predict(hr[:, :, :30])
    assert refused.awaiting_student


def test_student_inputs_are_checked(scene):
    cube, R, _ = scene
    with pytest.raises(ModelError, match="hr_msi must be a"):
        SpectraLift(steps=5, members=2, distill=0.5).fit(cube, R, hr_msi=np.zeros((3, 8, 8)))
    lazy = SpectraLift(steps=5, members=2, distill=0.5).fit(cube, R)
    with pytest.raises(ModelError, match="must be a \\(bands, rows, cols\\) array"):
        lazy.predict(np.zeros((4, 8)))
    assert lazy.awaiting_student  # a refused call trains nothing
