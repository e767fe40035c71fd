"""Matrix products whose result cannot depend on how they are computed.

A pixel's prediction must be the same whatever the tiling, the number of pixels per call, the thread count, the
BLAS kernel the CPU picks (AVX2, AVX-512, MKL's small-matrix paths, GEMV for one pixel) or the device. A
floating-point sum rounds differently in every order, and the BLAS picks the order; so instead of hoping for one
order, geolift makes every sum exact, where order cannot matter:

* each pixel's vector is rounded to ``bits`` significant bits *relative to its own largest entry* (so the grid
  depends on that pixel alone), and each row of the fixed matrix the same way, once;
* the product is formed in float64. Every term is then an integer multiple of one power of two (per pixel and
  output) below ``2**(2*bits)`` in units of it, and the sum of ``K`` such terms stays below ``2**53`` when
  ``2*bits + ceil(log2 K) <= 53``: no addition in the product rounds, in any order, on any hardware that does
  IEEE float64 arithmetic. The result is the exact product of the rounded operands.

``bits`` is the largest such number (:func:`exact_bits`): 23 for the network's 64-wide layers, 22 for ~200 HSI
bands, 24 for 20 coefficient maps - the precision of the float32 data itself. This is the splitting idea of
Ozaki et al. (2012, "Error-free transformations of matrix multiplication by using fast routines of matrix
multiplication", Numerical Algorithms 59), with one slice and the remainder dropped: the rounding error is of the
order of float32 rounding, and the result is reproducible by construction.

Everything after the products is element-wise (add, multiply, compare, clamp: one IEEE rounding each, the same in
every SIMD width); callers must not use fused forms (``addcmul``, ``add`` with ``alpha``, ``addmm`` with a bias),
which some kernels evaluate with a fused multiply-add and others not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geolift.errors import ModelError

__all__ = ["exact_bits", "round_significant", "ExactMatrix"]

_FLOAT64_SIGNIFICAND = 53  # bits, the implicit leading one included


@dataclass(frozen=True)
class _Format:
    dtype: torch.dtype
    int_dtype: torch.dtype  # the integer type of the same width (to assemble a float from its bits)
    significand: int  # bits, the implicit leading one included
    bias: int  # exponent bias

    @property
    def half(self) -> int:
        """The stored fraction bits of 1.5."""
        return 1 << (self.significand - 2)


_FLOAT64 = _Format(torch.float64, torch.int64, _FLOAT64_SIGNIFICAND, 1023)
_FLOAT32 = _Format(torch.float32, torch.int32, 24, 127)


def exact_bits(k: int) -> int:
    """Significant bits per operand so that a sum of ``k`` products of two such numbers is exact in float64."""
    k = max(int(k), 1)
    return (_FLOAT64_SIGNIFICAND - math.ceil(math.log2(k))) // 2 if k > 1 else _FLOAT64_SIGNIFICAND // 2


def round_significant(x: torch.Tensor, dim: int, bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` as float64, every slice along ``dim`` rounded to ``bits`` significant bits of its largest entry.

    Entries become integer multiples of ``2**(e - bits)``, where ``2**e`` is the smallest power of two above the
    slice's largest magnitude (round half to even). Adding then subtracting ``1.5 * 2**(e + p - 1 - bits)``
    (``p``: the float's significand bits) does the rounding in two IEEE additions, since the sum lies in a binade
    whose spacing is the grid. A float32 ``x`` is rounded in float32 when ``bits`` fits (half the memory traffic,
    the same result). The shift is assembled from its bits (``torch.ldexp`` goes through ``pow``, whose last bit
    may depend on the kernel). Returns a new tensor, or ``out`` (float64, ``x``'s shape; it may be ``x`` itself):
    a caller that rounds chunk after chunk reuses one buffer instead of allocating and converting every time.
    Entries must be finite and normal (a NaN spoils the products of its own slice only).
    """
    fmt = _FLOAT32 if x.dtype == torch.float32 and bits <= _FLOAT32.significand - 2 else _FLOAT64
    if x.dtype != fmt.dtype:
        x = x.to(fmt.dtype) if out is None else out.copy_(x)  # exact: float32 -> float64
    largest = x.abs().amax(dim=dim, keepdim=True)  # (torch.linalg.vector_norm(inf) is 10x slower here)
    exponent = torch.frexp(largest).exponent.to(fmt.int_dtype)  # largest < 2**exponent; 0 for 0
    biased = exponent.add_(fmt.significand - 1 - bits + fmt.bias).clamp_(1, 2 * fmt.bias)
    shift = biased.bitwise_left_shift_(fmt.significand - 1).bitwise_or_(fmt.half).view(fmt.dtype)
    if out is None:
        return (x + shift).sub_(shift).to(torch.float64)
    if fmt is _FLOAT64:
        return torch.add(x, shift, out=out).sub_(shift)
    return out.copy_((x + shift).sub_(shift))


class ExactMatrix:
    """A fixed ``(out, K)`` matrix ``W`` that multiplies pixel vectors exactly (see the module docstring).

    ``W`` is rounded once, row by row; each call rounds the pixels' vectors and multiplies in float64. The result
    for a pixel depends on that pixel's vector and ``W`` only.
    """

    def __init__(self, matrix: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"):
        w = matrix.detach() if torch.is_tensor(matrix) else torch.from_numpy(np.asarray(matrix, dtype=np.float64))
        w = w.to(device=device, dtype=torch.float64)
        if w.ndim != 2:
            raise ModelError(f"An exact matrix must be 2-D, got shape {tuple(w.shape)}.")
        self.bits = exact_bits(w.shape[1])
        self.matrix = round_significant(w, 1, self.bits)  # (out, K)

    def columns(self, x: torch.Tensor, out: torch.Tensor | None = None, work: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``W @ x`` for pixels in columns, ``x`` (K, n) -> (out, n) float64, into ``out`` if given. ``work``: a
        float64 buffer of ``x``'s shape for the rounded pixels (it may be ``x`` itself when ``x`` is no longer
        needed); the result is the same bits either way."""
        rounded = round_significant(x, 0, self.bits, out=work)
        return torch.mm(self.matrix, rounded) if out is None else torch.mm(self.matrix, rounded, out=out)
