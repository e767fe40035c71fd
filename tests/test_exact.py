"""geolift.exact: products that are exact, so no summation order, kernel or batch can change them."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from geolift.errors import ModelError
from geolift.exact import ExactMatrix, exact_bits, round_significant

pytestmark = pytest.mark.reproducible


def test_bits_leave_room_for_the_sum():
    assert exact_bits(1) == 26
    assert exact_bits(4) == 25
    assert exact_bits(64) == 23  # the network's hidden layers
    assert exact_bits(200) == 22  # EnMAP-like band counts
    for k in range(1, 5000, 7):
        assert 2 * exact_bits(k) + int(np.ceil(np.log2(k))) <= 53


def test_rounding_keeps_bits_significant_bits_of_each_slice():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 30)) * 10.0 ** rng.integers(-8, 8, size=(50, 1))  # rows of very different scale
    x[3] = 0.0
    rounded = round_significant(torch.from_numpy(x), 1, 20).numpy()
    assert np.all(rounded[3] == 0)
    for row, original in zip(rounded, x):
        largest = np.abs(original).max()
        if largest == 0:
            continue
        step = 2.0 ** (np.frexp(largest)[1] - 20)
        units = row / step
        assert np.array_equal(units, np.round(units))  # on the row's own grid
        assert np.abs(units).max() <= 2**20
        assert np.abs(row - original).max() <= 0.5 * step  # to nearest
    # columns of the transpose get the same treatment
    np.testing.assert_array_equal(round_significant(torch.from_numpy(x.T.copy()), 0, 20).numpy(), rounded.T)


def test_float32_input_is_rounded_in_float32_to_the_same_result():
    """Rounding a float32 vector in float32 (half the memory traffic) must give what float64 rounding gives."""
    x = torch.randn(300, 500, generator=torch.Generator().manual_seed(1)) * torch.logspace(-5, 5, 500)[None, :]
    for dim, bits in ((0, 10), (0, 22), (1, 22), (1, 23)):  # 23 bits does not fit float32's trick: float64 path
        rounded = round_significant(x, dim, bits)
        assert rounded.dtype == torch.float64
        assert torch.equal(rounded, round_significant(x.double(), dim, bits))


def exact_product(weights: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """W @ X in rational arithmetic (no rounding at all), then to float64."""
    w = [[Fraction(float(v)) for v in row] for row in weights]
    x = [[Fraction(float(v)) for v in col] for col in pixels.T]
    return np.array([[float(sum(a * b for a, b in zip(row, col))) for col in x] for row in w])


def test_product_equals_the_rational_product_of_the_rounded_operands():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(7, 64))
    pixels = rng.normal(size=(64, 9)) * 10.0 ** rng.integers(-3, 3, size=(1, 9))
    exact = ExactMatrix(weights)
    got = exact.columns(torch.from_numpy(pixels)).numpy()
    rounded_pixels = round_significant(torch.from_numpy(pixels), 0, exact.bits).numpy()
    np.testing.assert_array_equal(got, exact_product(exact.matrix.numpy(), rounded_pixels))
    np.testing.assert_allclose(got, weights @ pixels, rtol=1e-6, atol=1e-6 * np.abs(weights @ pixels).max())


def test_a_pixels_result_does_not_depend_on_the_others_or_on_the_layout():
    rng = np.random.default_rng(2)
    exact = ExactMatrix(rng.normal(size=(200, 20)).astype(np.float32))
    pixels = torch.from_numpy(rng.normal(size=(20, 3001)).astype(np.float32))
    whole = exact.columns(pixels)
    for a, b in [(0, 1), (1, 2), (2, 9), (9, 1000), (1000, 3001)]:
        assert torch.equal(exact.columns(pixels[:, a:b]), whole[:, a:b])
    order = torch.randperm(3001, generator=torch.Generator().manual_seed(0))
    assert torch.equal(exact.columns(pixels[:, order]), whole[:, order])
    assert torch.equal(exact.columns(pixels.T.contiguous().T), whole)  # another memory layout: the same numbers
    # summing the K terms in another order (the reversed matrix) changes nothing either
    reversed_k = ExactMatrix(exact.matrix.flip(1))
    assert torch.equal(reversed_k.columns(pixels.flip(0)), whole)


def test_threads_do_not_change_the_product():
    rng = np.random.default_rng(3)
    exact = ExactMatrix(rng.normal(size=(64, 64)))
    pixels = torch.from_numpy(rng.normal(size=(64, 50000)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = exact.columns(pixels)
        torch.set_num_threads(max(2, before))
        several = exact.columns(pixels)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, several)


def test_a_matrix_must_be_two_dimensional():
    with pytest.raises(ModelError, match="2-D"):
        ExactMatrix(np.ones(3))
