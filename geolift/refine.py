"""Make a fused cube consistent with both observations, with the blur kernel estimated from the data.

SpectraLift maps each HR-MSI pixel to an HSI spectrum on its own, so its result X0 agrees with the HR-MSI (up to
the network's error) but nothing ties it to the LR-HSI it was trained on: blurred and aggregated to the LR grid it
misses whatever the few MSI bands cannot tell apart. This module adds that missing low-resolution part back:

1. **PSF from the data** (:func:`geolift.blur.estimate_psf`): the synthetic LR-MSI ``Z = R·Y`` must equal the
   HR-MSI ``M`` blurred and aggregated to the LR grid, ``D(B*M)``; a parametric kernel is fitted to that.
2. **Consistency** (:func:`solve_correction`): the LR residual ``E = Y - D(B*X0)`` is explained by a smooth LR
   correction ``e`` with ``(D B U) e ≈ E`` (``U``: cubic interpolation to the HR grid), solved in the Fourier domain
   with a Tikhonov weight chosen by generalised cross-validation (no noise level needed). Before solving, ``E`` is
   projected onto the null space of ``R`` per pixel, ``P = I - Rᵀ(RRᵀ)⁻¹R``, so the correction changes nothing the
   HR-MSI sees: ``R·X = R·X0`` exactly.
3. ``X = X0 + U(e)``.

Everything is separable (:mod:`geolift.blur`: ``D·B`` is ``Σ_k Gy_k ⊗ Gx_k`` with sparse per-axis matrices), so a
tile's contribution to the LR sums is ``Gy_k[:, rows] · X0_tile · Gx_k[:, cols]ᵀ`` - no halo is needed and tiles can
be added in any order (:class:`LowResAccumulator`). Pass 2 adds :func:`correction_for_tile` to each recomputed
tile. :func:`refine` runs both passes in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from geolift.blur import (
    GridPair,
    PSFEstimate,
    _BlurAggregate,
    _grid_for,
    degrade,
    estimate_psf,
    find_shift,
    fit_free_kernel,
    misfit_on_pixels,
    refit_width,
)
from geolift.errors import ModelError
from geolift.exact import ExactMatrix
from geolift.interpolation import SeparableCubic

__all__ = [
    "GridPair",
    "PSFEstimate",
    "LowResAccumulator",
    "Correction",
    "estimate_psf",
    "solve_correction",
    "correction_for_tile",
    "add_correction",
    "null_space_projector",
    "spectral_subspace",
    "degrade",
    "refine",
]

log = logging.getLogger("geolift")

#: Spectral components the LR residual is projected onto (see :func:`spectral_subspace`).
SUBSPACE_RANK = 20

#: The blur is estimated on a central window of at most this many output pixels per side (cheap, and plenty).
PSF_WINDOW = 1024

#: Output rows reduced at a time in pass 1: its float64 temporaries stay ~50 MB per 200 bands.
REFINE_STRIP_ROWS = 64

#: The blur-model check (:func:`blur_model_problem`): a free-form kernel of at most this radius (HR pixels) is
#: fitted on a central window of this size, and a parametric fit leaving this many times its misfit is refused.
FREE_KERNEL_WINDOW, FREE_KERNEL_MAX_RADIUS, MODEL_MISFIT_RATIO = 384, 12, 10.0
MISFIT_FLOOR = 1e-5  # below this share of variance, a misfit is noise-level whatever the ratio

#: The free-form kernel replaces the parametric fit when the parametric fit leaves more than this many times the
#: misfit the free-form kernel leaves on LR pixels held out of its own fit (same window, same pixels).
#: ``benchmarks/psf_zoo.py``-style Potsdam cases at ratios 4 and 8: Gaussian, Kolmogorov, Airy, Moffat,
#: Lorentzian, parabolic and delta blurs 0.23-1.09 (the parametric fit is as good, with two parameters instead of
#: hundreds of taps); HyperBench's sinc 21-189, Gabor 6-11, Hermite 3.0-5.7, where the free kernel's correction
#: gained 0.7-1.7 dB over the network alone and a Gaussian's could cost 8 dB.
FREE_KERNEL_SWITCH = 2.0

#: An LR pixel takes part in the solve only where the HR grid covers at least this share of its footprint. The mean
#: over most of a footprint still says what the pixel saw: on tests/test_fuse.py's aligned Wald case, whose output
#: window loses one HR column to the alignment (edge LR pixels ~75 % covered), requiring 99.9 % cost 0.95 dB; at
#: 0.5, benchmarks/broad.py's misregistered case P12 let in a 60 % covered column of a dark border: -2.5 dB.
MIN_FOOTPRINT_COVERED = 0.7

#: Pass 1 reads the output grid in windows of this size, whatever the caller's tiles are: the LR sums are added
#: window by window, and a fixed split (and order) keeps their rounding, and so the output, the same for every tile
#: size, in ``geolift batch`` and in :func:`refine` (the library's ``SpectraLift.predict``).
REFINE_WINDOW = 512
_GRAM_CHUNK = 65536  # LR pixels per chunk when forming the spectral Gram matrix
_CHUNK_PIXELS = 2048  # pixels per step of per-pixel work (pass 1's reduction, pass 2): stays in cache


def _flat(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous ``shape`` view of the start of a flat work buffer."""
    return buffer[:math.prod(shape)].view(shape)


# ----------------------------------------------------------------------------------------------- pass 1
class LowResAccumulator:
    """Pass 1 of the streamed refinement: collects ``D(B*X0)`` on the LR grid from HR tiles in any order.

    ``add_tile(x0_tile, row_off, col_off)`` takes a ``(C, rows, cols)`` block of the network's output at that HR
    offset (NaN = nodata). No halo is needed: the blur of each HR pixel is spread to the LR pixels it reaches by the
    per-axis matrices. After all tiles, :meth:`result` is the degraded cube (NaN where nodata reached an LR pixel
    or no HR pixel covers it).

    With ``basis`` (a (C, k) orthonormal matrix, e.g. :func:`spectral_subspace` of the LR-HSI) each tile is first
    reduced to its k coefficients on it: the consistency step only ever uses the residual's projection onto that
    subspace, and blurring k maps instead of C bands is C/k times less work and memory. :meth:`coefficients` then
    gives the degraded coefficient maps, and :meth:`result` the degraded cube's projection onto the subspace.
    """

    def __init__(self, grid: GridPair, psf: PSFEstimate, n_bands: int, basis: np.ndarray | None = None):
        self.grid = grid
        self.psf = psf
        self.n_bands = int(n_bands)
        self.basis = None if basis is None else np.asarray(basis, dtype=np.float64)
        if self.basis is not None and (self.basis.ndim != 2 or self.basis.shape[0] != self.n_bands):
            raise ModelError(f"The spectral basis must be a ({self.n_bands}, k) matrix, got {self.basis.shape}.")
        self._reduce = None if self.basis is None else ExactMatrix(self.basis.T)  # a pixel's maps: its own alone
        self._op = _BlurAggregate.for_psf(grid, psf)
        maps = self.n_bands if self.basis is None else self.basis.shape[1]
        self._sums = np.zeros((maps, *grid.lr_shape))
        self._nodata = np.zeros((1, *grid.lr_shape))
        self._finished = False  # set once coefficients(in_place=True) has divided the sums

    def add_tile(self, x0_tile: np.ndarray, row_off: int, col_off: int) -> None:
        self.add_maps(self.reduce(x0_tile), row_off, col_off)

    def reduce(self, x0_tile: np.ndarray) -> np.ndarray:
        """A tile's maps to accumulate: its k coefficients on the basis (float64 (k, rows, cols); a pixel with
        NaN in any band gets NaN), or the tile itself without a basis. Thread-safe, so workers can reduce
        tiles while one thread adds them (and only k maps per tile need to wait in memory)."""
        x0_tile = np.asarray(x0_tile)
        if x0_tile.ndim != 3 or x0_tile.shape[0] != self.n_bands:
            raise ModelError(f"A tile must be a ({self.n_bands}, rows, cols) array, got {x0_tile.shape}.")
        if self._reduce is None:
            return x0_tile.astype(np.float64)
        _, r, c = x0_tile.shape
        flat = torch.from_numpy(np.ascontiguousarray(x0_tile).reshape(self.n_bands, r * c))
        k, step = self._reduce.matrix.shape[0], _CHUNK_PIXELS  # a chunk's pixels stay in the CPU cache
        maps = torch.empty((k, r * c), dtype=torch.float64)
        work = torch.empty(self.n_bands * min(step, r * c), dtype=torch.float64)
        product = torch.empty(k * min(step, r * c), dtype=torch.float64)
        with torch.inference_mode():  # torch's threads, not a second BLAS pool (see _TileCorrection)
            for a in range(0, r * c, step):
                n = min(r * c, a + step) - a
                maps[:, a:a + n] = self._reduce.columns(flat[:, a:a + n], _flat(product, (k, n)),
                                                        _flat(work, (self.n_bands, n)))
        return maps.numpy().reshape(-1, r, c)

    def add_maps(self, maps: np.ndarray, row_off: int, col_off: int) -> None:
        """Add a tile's :meth:`reduce` result at HR offset (row_off, col_off)."""
        self._check_open()
        maps = np.asarray(maps, dtype=np.float64)
        if maps.ndim != 3 or maps.shape[0] != self._sums.shape[0]:
            raise ModelError(f"Maps must be a ({self._sums.shape[0]}, rows, cols) array, got {maps.shape}.")
        _, r, c = maps.shape
        if row_off < 0 or col_off < 0 or row_off + r > self.grid.hr_shape[0] or col_off + c > self.grid.hr_shape[1]:
            raise ModelError(f"The tile at ({row_off}, {col_off}) of size {r} x {c} lies outside the "
                             f"{self.grid.hr_shape[0]} x {self.grid.hr_shape[1]} HR grid.")
        finite = np.all(np.isfinite(maps), axis=0)
        rows, cols = slice(row_off, row_off + r), slice(col_off, col_off + c)
        if not finite.all():
            maps = np.where(finite, maps, 0.0)
            self._op.sums((~finite)[None].astype(np.float64), rows, cols, out=self._nodata)
        self._op.sums(maps, rows, cols, out=self._sums)

    def _check_open(self) -> None:
        if self._finished:
            raise ModelError("This accumulator's sums were already divided into coefficients in place; "
                             "it takes no more tiles.")

    def coefficients(self, in_place: bool = False) -> np.ndarray:
        """The degraded maps (k coefficient maps with a basis, else the C bands); NaN where nodata reached an LR
        pixel or the HR grid covers less than :data:`MIN_FOOTPRINT_COVERED` of its footprint (the mean would be
        over too small a part of what the LR pixel saw: such pixels carry no data into the solve). ``in_place``
        divides the sums where they lie instead of in a copy as large as the maps (a full EnMAP grid: 160 MB); the
        accumulator then takes no more tiles."""
        self._check_open()
        counts = self._op.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.divide(self._sums, counts, out=self._sums if in_place else None)
        self._finished = in_place
        partial = counts < MIN_FOOTPRINT_COVERED / (self.grid.scale_y * self.grid.scale_x)
        out[:, partial | (self._nodata[0] > 1e-9)] = np.nan
        return out

    def result(self) -> np.ndarray:
        """The degraded cube ``D(B*X0)`` (C, h, w) (with a basis: its projection onto the subspace)."""
        maps = self.coefficients()
        return maps if self.basis is None else np.tensordot(self.basis, maps, axes=1)

    def lr_kernel(self) -> np.ndarray:
        """The LR-grid kernel of ``D·B·U`` (shift-invariant approximation, interior rows/columns averaged)."""
        terms = []
        for axis_name, mats, counts in (("y", self._op.gy, self._op.count_y), ("x", self._op.gx, self._op.count_x)):
            u = self.grid.axis(axis_name).interpolation()
            dense = [(g @ u).toarray() / np.maximum(counts, 1)[:, None] for g in mats]
            half = max(_band_half_width(m) for m in dense)
            terms.append([_mean_diagonals(m, half) for m in dense])
        kernel = sum(np.outer(ky, kx) for ky, kx in zip(*terms))
        return kernel


def _mean_diagonals(matrix: np.ndarray, half: int) -> np.ndarray:
    """Average each diagonal -half..half of a (nearly Toeplitz) square matrix over interior rows."""
    n = matrix.shape[0]
    margin = min(n // 4, half)
    rows = np.arange(margin, n - margin) if n - 2 * margin > 0 else np.arange(n)
    out = np.zeros(2 * half + 1)
    for d in range(-half, half + 1):
        vals = [matrix[i, i + d] for i in rows if 0 <= i + d < n]
        out[d + half] = np.mean(vals) if vals else 0.0
    return out


def _band_half_width(matrix: np.ndarray) -> int:
    """Largest |column - row| with a non-negligible entry."""
    rows, cols = np.nonzero(np.abs(matrix) > 1e-9 * np.abs(matrix).max())
    return int(np.max(np.abs(cols - rows))) if len(rows) else 0


# ----------------------------------------------------------------------------------------------- LR solve
def null_space_projector(R: np.ndarray) -> np.ndarray:
    """``P = I - Rᵀ(RRᵀ)⁻¹R`` (C x C): removes from a spectrum everything the MSI bands see."""
    R = np.asarray(R, dtype=np.float64)
    return np.eye(R.shape[1]) - R.T @ np.linalg.pinv(R @ R.T) @ R


def spectral_subspace(lr_hsi: np.ndarray, rank: int = SUBSPACE_RANK) -> np.ndarray:
    """(C, rank) orthonormal basis of the LR-HSI's leading spectral components (eigenvectors of the valid
    pixels' Gram matrix, i.e. their leading left singular vectors, formed chunk by chunk).

    The LR residual is projected onto it before the solve: the network's errors are spectrally smooth and live in
    the span of the scene's spectra, while the sensor noise is white across bands, so the projection keeps the
    former and drops about ``1 - rank/C`` of the latter.
    """
    cube = np.asarray(lr_hsi)
    bands = cube.shape[0]
    pixels = cube.reshape(bands, -1)
    gram, n_valid = torch.zeros((bands, bands), dtype=torch.float64), 0
    with torch.inference_mode():
        for a in range(0, pixels.shape[1], _GRAM_CHUNK):  # no float64 copy of the whole cube
            chunk = np.asarray(pixels[:, a:a + _GRAM_CHUNK], dtype=np.float64)
            chunk = torch.from_numpy(chunk[:, np.all(np.isfinite(chunk), axis=0)])
            gram += chunk @ chunk.T  # torch: rounds the same for a given torch thread count (see _TileCorrection)
            n_valid += chunk.shape[1]
        vectors = torch.linalg.eigh(gram)[1].numpy()  # ascending; the leading left singular vectors of the pixels
    keep = min(int(rank), bands, max(n_valid, 1))
    return np.ascontiguousarray(vectors[:, ::-1][:, :keep])


@dataclass
class Correction:
    """Result of the LR solve, everything pass 2 needs: picklable, LR-sized, kept as coefficient maps.

    The correction is ``e = lr_basis · lr_coefficients`` (C, h, w): it lies in the span of ``P·S`` (the LR-HSI's
    leading components projected on R's null space), so ``lr_basis`` (C, k) orthonormal and k maps hold it
    exactly, and pass 2 interpolates k maps instead of C bands. ``degraded_basis · degraded_coefficients`` is
    ``D(B*X0)`` on the same subspace ``S``, used to treat dark pixels gently. ``response``: R, so that pass 2 can
    project its damped correction on R's null space again.
    """

    lr_coefficients: np.ndarray
    lr_basis: np.ndarray
    degraded_coefficients: np.ndarray
    degraded_basis: np.ndarray
    grid: GridPair
    response: np.ndarray
    regularization: float
    lr_kernel: np.ndarray
    residual_before: float  # RMS of the (projected) LR residual
    residual_after: float  # RMS of what the correction leaves of it, on the LR grid
    dark_fraction: float = 0.5

    @classmethod
    def from_cubes(cls, lr: np.ndarray, degraded: np.ndarray, grid: GridPair, response: np.ndarray,
                   regularization: float, lr_kernel: np.ndarray, residual_before: float = float("nan"),
                   residual_after: float = float("nan"), dark_fraction: float = 0.5) -> Correction:
        """A correction given as full (C, h, w) cubes (identity bases): for tests and hand-made corrections."""
        eye = np.eye(np.shape(lr)[0], dtype=np.float32)
        return cls(np.asarray(lr, np.float32), eye, np.asarray(degraded, np.float32), eye, grid,
                   np.asarray(response, np.float64), float(regularization), np.asarray(lr_kernel),
                   residual_before, residual_after, float(dark_fraction))

    @property
    def lr(self) -> np.ndarray:
        """The correction ``e`` on the LR grid as a (C, h, w) cube."""
        return np.tensordot(self.lr_basis, self.lr_coefficients, axes=1)


def _map_in_place(mapping: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``mapping @ maps`` over the map axis for an (r, k) ``mapping`` with r <= k, written over the first r
    of the (k, h, w) ``maps`` a column chunk at a time (no second array as large as the maps)."""
    r = mapping.shape[0]
    flat = maps.reshape(maps.shape[0], -1)
    for a in range(0, flat.shape[1], _GRAM_CHUNK):
        flat[:r, a:a + _GRAM_CHUNK] = mapping @ flat[:, a:a + _GRAM_CHUNK]
    return maps[:r]


def lr_coefficients(lr_hsi: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The LR-HSI's (k, h, w) float64 coefficient maps on an orthonormal (C, k) ``basis`` (NaN where a band is),
    formed in chunks: a caller can keep these and let go of the cube (a full EnMAP scene: 0.8 GB -> 160 MB)."""
    y = np.asarray(lr_hsi)
    basis = np.asarray(basis, dtype=np.float64)
    if y.ndim != 3 or basis.ndim != 2 or basis.shape[0] != y.shape[0]:
        raise ModelError(f"The LR-HSI {y.shape} and the spectral basis {basis.shape} do not fit together.")
    bands, h, w = y.shape
    pixels = y.reshape(bands, h * w)
    observed = np.empty((basis.shape[1], h * w))
    reduce = torch.from_numpy(np.ascontiguousarray(basis.T))
    with torch.inference_mode():
        for a in range(0, h * w, _GRAM_CHUNK):  # float64 without a float64 copy of the whole LR-HSI
            chunk = torch.from_numpy(np.asarray(pixels[:, a:a + _GRAM_CHUNK], dtype=np.float64))
            observed[:, a:a + _GRAM_CHUNK] = (reduce @ chunk).numpy()
    return observed.reshape(-1, h, w)


def solve_correction(lr_hsi: np.ndarray, degraded_x0: np.ndarray, R: np.ndarray, lr_kernel: np.ndarray,
                     grid: GridPair, *, regularization: float | None = None,
                     subspace_rank: int | None = SUBSPACE_RANK, dark_fraction: float = 0.5,
                     basis: np.ndarray | None = None) -> Correction:
    """Solve ``K ⊛ e ≈ P·S·(Y - D(B*X0))`` on the LR grid from the whole LR-HSI cube ``Y``.

    ``degraded_x0`` and ``lr_kernel`` come from :class:`LowResAccumulator`: the (C, h, w) degraded cube, or, with
    ``basis`` (the accumulator's (C, k) orthonormal basis), its k coefficient maps on it. ``S`` projects onto
    ``basis`` if given, else onto the LR-HSI's leading ``subspace_rank`` spectral components (None: no
    projection). See :func:`solve_on_basis`, which this calls with the cube's coefficient maps.
    """
    y = np.asarray(lr_hsi)
    bands = y.shape[0] if y.ndim == 3 else -1
    if basis is None:
        basis = spectral_subspace(y, subspace_rank) if subspace_rank is not None else np.eye(max(bands, 1))
        x = np.asarray(degraded_x0, dtype=np.float64)
        if y.shape != x.shape or y.ndim != 3:
            raise ModelError(f"The LR-HSI {y.shape} and the degraded network output {x.shape} must be the same "
                             "(bands, rows, cols) shape.")
        degraded = np.tensordot(basis.T, x, axes=1)
    else:
        degraded = degraded_x0  # lr_coefficients and solve_on_basis check the shapes
    return solve_on_basis(lr_coefficients(y, basis), degraded, basis, R, lr_kernel, grid,
                          regularization=regularization, dark_fraction=dark_fraction)


def _principal_axes(maps: np.ndarray) -> np.ndarray:
    """(k, k) orthonormal axes of k maps' joint variation, leading first (eigenvectors of their Gram matrix).

    The Gram matrix is summed in torch in fixed chunks, as :func:`spectral_subspace` does: numpy's BLAS may round
    differently with another thread count, and ``geolift batch`` must write what ``geolift fuse`` writes."""
    flat = maps.reshape(maps.shape[0], -1)
    gram = torch.zeros((flat.shape[0], flat.shape[0]), dtype=torch.float64)
    with torch.inference_mode():
        for a in range(0, flat.shape[1], _GRAM_CHUNK):
            chunk = torch.from_numpy(np.ascontiguousarray(flat[:, a:a + _GRAM_CHUNK]))
            gram += chunk @ chunk.T
        vectors = torch.linalg.eigh(gram)[1].numpy()
    return np.ascontiguousarray(vectors[:, ::-1])


def solve_on_basis(observed: np.ndarray, degraded: np.ndarray, basis: np.ndarray, R: np.ndarray,
                   lr_kernel: np.ndarray, grid: GridPair, *, regularization: float | None = None,
                   dark_fraction: float = 0.5) -> Correction:
    """Solve ``K ⊛ e ≈ P·S·(Y - D(B*X0))`` from the k coefficient maps of ``Y`` (``observed``, from
    :func:`lr_coefficients`) and of ``D(B*X0)`` (``degraded``) on the orthonormal (C, k) ``basis``.

    ``P`` projects onto R's null space. LR pixels that are NaN in either input carry no data (the correction
    there comes from the neighbours' through ``K``). The problem is diagonal in the Fourier domain of the
    mirror-extended LR grid, so it costs a few FFTs of k coefficient maps, one map at a time (``P·S`` is applied
    as a k x k map onto an orthonormal basis of its range, which keeps every norm), and GCV (generalised
    cross-validation) picks the weight from the data without knowing the noise level: one for all maps, then,
    on the residual's principal components, one per component that may only be heavier (four cases of
    benchmarks/broad.py: +0.07 to +0.44 dB and 1-16 % lower SAM than one weight for all). ``observed`` is
    overwritten (it becomes the residual).
    """
    R = np.asarray(R, dtype=np.float64)
    basis = np.asarray(basis, dtype=np.float64)
    degraded = np.asarray(degraded, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if (basis.ndim != 2 or observed.ndim != 3 or observed.shape != degraded.shape
            or observed.shape[0] != basis.shape[1] or observed.shape[1:] != tuple(grid.lr_shape)):
        raise ModelError(f"The observed {observed.shape} and degraded {degraded.shape} coefficient maps, the "
                         f"spectral basis {basis.shape} and the LR grid {tuple(grid.lr_shape)} do not fit together.")
    bands, (h, w) = basis.shape[0], observed.shape[1:]
    residual = observed
    residual -= degraded  # in place: the k maps are as large as a 20-band LR cube
    valid = np.all(np.isfinite(residual), axis=0)
    if not valid.any():
        raise ModelError("No LR pixel is valid in both the LR-HSI and the degraded network output.")
    residual[:, ~valid] = 0.0
    # P·S in coordinates: P·basis = Q·M with Q (C, r) orthonormal, so the residual becomes r maps M·c
    u, sv, vt = np.linalg.svd(null_space_projector(R) @ basis, full_matrices=False)
    keep = sv > 1e-9 * max(float(sv[0]), 1e-300) if sv.size else np.zeros(0, bool)
    q, mapping = u[:, keep], sv[keep, None] * vt[keep]
    residual = _map_in_place(mapping, residual)
    axes = _principal_axes(residual)  # the residual's own components: each gets its own weight below
    residual = _map_in_place(np.ascontiguousarray(axes.T), residual)
    q = q @ axes
    k = np.asarray(lr_kernel, dtype=np.float64)
    ky, kx = k.shape[0] // 2, k.shape[1] // 2
    # the mirror extension removes the FFT's wrap-around jump at the borders
    pad_y, pad_x = min(max(h - 1, 0), 2 * max(ky, 2)), min(max(w - 1, 0), 2 * max(kx, 2))
    H, W = h + 2 * pad_y, w + 2 * pad_x
    if k.shape[0] > H or k.shape[1] > W:
        k = k[max(0, ky - H // 2):ky + H // 2 + 1 if H > 1 else ky + 1, max(0, kx - W // 2):kx + W // 2 + 1]
        ky, kx = k.shape[0] // 2, k.shape[1] // 2
    kernel_full = np.zeros((H, W))
    kernel_full[:k.shape[0], :k.shape[1]] = k
    kernel_full = np.roll(kernel_full, (-ky, -kx), axis=(0, 1))
    K = np.fft.rfft2(kernel_full)
    power = np.abs(K) ** 2
    weights = np.full(power.shape, 2.0)  # rfft2 keeps half the spectrum: count the mirrored half too
    weights[:, 0] = 1.0
    if W % 2 == 0:
        weights[:, -1] = 1.0

    def spectrum(residual_map: np.ndarray) -> np.ndarray:
        """One map's spectrum on the mirror-extended grid (one map at a time: the FFT's temporaries stay small)."""
        return np.fft.rfft2(np.pad(residual_map, ((pad_y, pad_y), (pad_x, pad_x)), mode="symmetric"))

    energy = np.zeros(power.shape)
    for residual_map in residual:
        E = spectrum(residual_map)
        energy += E.real ** 2 + E.imag ** 2

    def choose(energy: np.ndarray) -> float:
        """The Tikhonov weight that minimises GCV for a residual whose spectrum has this ``energy``."""
        def gcv(log_lam: float) -> float:
            lam = math.exp(log_lam)
            filt = lam / (power + lam)
            return float(np.sum(weights * filt**2 * energy) / np.sum(weights * filt) ** 2)

        top = float(power.max())
        logs = np.linspace(math.log(top * 1e-6), math.log(top * 10.0), 41)
        i = int(np.argmin([gcv(v) for v in logs]))
        lo, hi = logs[max(0, i - 1)], logs[min(len(logs) - 1, i + 1)]
        return math.exp(optimize.minimize_scalar(gcv, bounds=(lo, hi), method="bounded").x)

    lam = choose(energy) if regularization is None else float(regularization)
    lams = [lam] * len(residual)
    if regularization is None:
        # GCV once more per component, never below the joint weight: a component that is mostly noise (white
        # across the LR grid) gets a heavier weight, so the correction carries less of it into the output
        for i, residual_map in enumerate(residual):
            E = spectrum(residual_map)
            lams[i] = max(lam, choose(E.real ** 2 + E.imag ** 2))
    inner = (slice(pad_y, pad_y + h), slice(pad_x, pad_x + w))
    e = np.empty(residual.shape, dtype=np.float32)
    sum_before = sum_after = 0.0
    for i, residual_map in enumerate(residual):
        E = spectrum(residual_map)
        e[i] = np.fft.irfft2(np.conj(K) * E / (power + lams[i]), s=(H, W))[inner]
        fitted = np.fft.irfft2(power * E / (power + lams[i]), s=(H, W))[inner]
        sum_before += float(np.sum(residual_map[valid] ** 2))
        sum_after += float(np.sum((residual_map - fitted)[valid] ** 2))
    scale = float(bands * valid.sum())  # RMS over all C bands, as if the cubes were expanded
    before, after = math.sqrt(sum_before / scale), math.sqrt(sum_after / scale)
    filled = degraded.astype(np.float32)  # NaN LR pixels take the map's mean (the caller's maps are kept)
    for out, source in zip(filled, degraded):
        finite = np.isfinite(source)
        out[~finite] = float(np.mean(source[finite])) if finite.any() else 0.0
    return Correction(e, q.astype(np.float32), filled,
                      basis.astype(np.float32), grid, R, lam, k, before, after, float(dark_fraction))


# ----------------------------------------------------------------------------------------------- pass 2
def _cubic_to_tile(grid: GridPair, maps: list[np.ndarray], row_off: int, col_off: int, rows: int,
                   cols: int) -> SeparableCubic:
    """Cubic interpolation of LR maps (each (k_i, h, w)) to an HR tile, row range by row range (Σk_i maps).

    The taps depend on the HR index alone and each output pixel is the sum of its own four taps in a fixed order
    (:class:`geolift.interpolation.SeparableCubic`): a pixel's value does not depend on how the output is cut
    into tiles (``geolift batch`` must write what ``geolift fuse`` writes, bit for bit), and only the LR rows and
    columns the tile reaches are read.
    """
    return SeparableCubic(maps, grid.axis("y").cubic_taps(np.arange(row_off, row_off + rows)),
                          grid.axis("x").cubic_taps(np.arange(col_off, col_off + cols)))


_SMALLEST_POSITIVE = 2.0 ** -149  # float32's smallest subnormal: clamping to it changes no positive value


class _TileCorrection:
    """Pass 2's per-pixel work on one tile, in row chunks small enough to stay in the CPU cache.

    Every product with a pixel's vector is exact (:class:`geolift.exact.ExactMatrix`) and everything else is
    element-wise, so a pixel's correction depends on that pixel alone: ``geolift batch`` writes what ``geolift
    fuse`` writes, bit for bit, however either cuts the scene into tiles, on any CPU kernel. The work runs in
    torch, on its CPU threads (one by default in the pipeline, see ``geolift.model.torch_threads``): numpy's BLAS
    would start its own thread pool, which competes with GDAL's compression threads for the same cores.
    The coefficient maps are interpolated a chunk of rows at a time and every intermediate lives in work buffers
    allocated once per tile: apart from the products the chunks' work is memory-bound, and new tensors, dtype
    conversions and masks cost as much as the products did (docs/benchmarks.md, "Pass 2's per-tile work").
    """

    def __init__(self, correction: Correction, x0: np.ndarray, row_off: int, col_off: int):
        self.bands, self.rows, self.cols = x0.shape
        self.damp = correction.dark_fraction > 0
        maps = [correction.lr_coefficients] + ([correction.degraded_coefficients] if self.damp else [])
        self.coef = _cubic_to_tile(correction.grid, maps, row_off, col_off, self.rows, self.cols)
        self.k = correction.lr_coefficients.shape[0]
        self.lr_basis = ExactMatrix(correction.lr_basis)
        self.local_basis = ExactMatrix(correction.dark_fraction * np.asarray(correction.degraded_basis, np.float64))
        R = np.asarray(correction.response, dtype=np.float64)
        self.back = ExactMatrix(np.linalg.pinv(R @ R.T) @ R)  # P v = v - Rᵀ (back v)
        self.forward = ExactMatrix(R.T)
        self.step = max(1, _CHUNK_PIXELS // max(self.cols, 1))
        n, bands = min(self.step, self.rows) * self.cols, self.bands
        self._coef32 = torch.empty(self.coef.maps * n)
        self._coef64 = torch.empty(self.coef.maps * n, dtype=torch.float64)
        self._product = torch.empty(bands * n, dtype=torch.float64)
        self._work = torch.empty(bands * n, dtype=torch.float64)
        self._back = torch.empty(self.back.matrix.shape[0] * n, dtype=torch.float64)
        self._delta, self._local, self._scale, self._mask = (torch.empty(bands * n) for _ in range(4))

    def chunks(self):
        for a in range(0, self.rows, self.step):
            yield slice(a, min(self.rows, a + self.step))

    def delta(self, x0_rows: torch.Tensor, rows: slice) -> torch.Tensor:
        """The correction (C, n) float32 for ``x0_rows`` (C, n), the tile's ``rows`` flattened: a work buffer,
        valid until the next call."""
        n, maps, shape = x0_rows.shape[1], self.coef.maps, (self.bands, x0_rows.shape[1])
        coef32 = self.coef.rows(rows, _flat(self._coef32, (maps, rows.stop - rows.start, self.cols)))
        coef = _flat(self._coef64, (maps, n)).copy_(coef32.view(maps, n))  # exact; rounded in place below
        product, back = _flat(self._product, shape), _flat(self._back, (self.back.matrix.shape[0], n))
        # exact products, each rounded once to float32 (the element-wise work is float32)
        delta = _flat(self._delta, shape).copy_(self.lr_basis.columns(coef[:self.k], product, coef[:self.k]))
        if not self.damp:
            return delta  # the solve's correction lies in R's null space already
        local = _flat(self._local, shape).copy_(self.local_basis.columns(coef[self.k:], product, coef[self.k:]))
        delta = self._damped(delta, local, x0_rows, masked=False)
        self.back.columns(delta, back, _flat(self._work, shape))
        if torch.isnan(back).any():  # NaN somewhere in the chunk: the masks' answer (see _damped)
            delta = self._damped(_flat(self._delta, shape), local, x0_rows, masked=True)
            self.back.columns(delta, back, _flat(self._work, shape))
        projected = self.forward.columns(back, product, back)  # back onto R's range (``back`` is rounded in place)
        return delta.sub_(_flat(self._mask, shape).copy_(projected))  # what is left lies in R's null space

    def _damped(self, delta: torch.Tensor, local: torch.Tensor, x0: torch.Tensor, masked: bool) -> torch.Tensor:
        """``delta`` with the brightening corrections of dark pixels scaled down (see :func:`correction_for_tile`),
        ``local`` being ``dark_fraction`` times the pixels' blurred LR neighbourhood; in a work buffer (``delta``
        and ``local`` are kept).

        The rule is ``scale = clamp(x0 / local, 0, 1)``, but 1 where ``local <= 0`` or ``delta <= 0``. By default
        the exceptions are taken by a ``maximum`` with the 0/1 comparisons, ``local`` clamped to the smallest
        positive float first so that ``0 / 0`` makes no NaN: the values of masking, at a fraction of the cost
        (torch's ``masked_fill`` and ``where`` are not vectorised on the CPU; a comparison into float32 and
        ``maximum`` are), wherever ``x0`` and ``local`` are not NaN. Where one is, ``maximum`` gives NaN where the
        masks may not, so the caller, seeing a NaN in its projection, asks again with ``masked``.
        """
        scale = _flat(self._scale, tuple(delta.shape))
        if masked:
            torch.div(x0, local, out=scale).masked_fill_(local <= 0, 1.0).clamp_(0.0, 1.0)
            return scale.masked_fill_(delta <= 0, 1.0).mul_(delta)  # only brightening corrections are damped
        not_positive = torch.le(local, 0.0, out=_flat(self._mask, tuple(delta.shape)))  # 1.0 or 0.0
        torch.clamp(local, min=_SMALLEST_POSITIVE, out=scale)
        torch.div(x0, scale, out=scale).clamp_(0.0, 1.0)
        torch.maximum(scale, not_positive, out=scale)
        torch.maximum(scale, torch.le(delta, 0.0, out=not_positive), out=scale)  # only brightening is damped
        return scale.mul_(delta)


def correction_for_tile(correction: Correction, x0_tile: np.ndarray, row_off: int, col_off: int) -> np.ndarray:
    """The additive correction (C, rows, cols) float32 for the HR tile ``x0_tile`` at (row_off, col_off).

    ``U(e)``, the correction interpolated to the tile's HR pixel centres. Where a pixel is, in some band, darker
    than ``dark_fraction`` times its blurred LR neighbourhood, a *brightening* correction of that band is scaled
    by ``x0 / (dark_fraction·U(D(B*X0)))`` < 1: the LR residual of a bright neighbourhood says little about a dark
    pixel inside it (water, shadow), and adding signal to near-zero bands is what hurts the spectral angle most.
    A darkening correction passes unchanged: it pulls an over-bright dark pixel towards zero (the value range
    clips it there), which is what blur-mixed training pixels make the network get wrong.
    Then the correction is projected
    onto R's null space again, so ``R·(x0 + correction) = R·x0`` per pixel. NaN pixels of ``x0_tile`` give NaN.
    Works on coefficient maps (see :class:`Correction`) in float32.
    """
    x0 = np.asarray(x0_tile, dtype=np.float32)
    work = _TileCorrection(correction, x0, row_off, col_off)
    out = np.empty(x0.shape, dtype=np.float32)
    with torch.inference_mode():
        for rows in work.chunks():
            x = np.ascontiguousarray(x0[:, rows]).reshape(work.bands, -1)
            delta = work.delta(torch.from_numpy(x), rows).numpy()
            delta[:, ~np.all(np.isfinite(x), axis=0)] = np.nan
            out[:, rows] = delta.reshape(work.bands, -1, work.cols)
    return out


def add_correction(correction: Correction, tile: np.ndarray, row_off: int, col_off: int,
                   value_range: tuple[float, float] | None = None, relative_rms: np.ndarray | None = None) -> None:
    """``tile += correction_for_tile(...)`` in place, then clip to ``value_range``: pass 2 without a
    tile-sized temporary, every step on cache-sized chunks. ``tile`` must be a C-contiguous float32
    (C, rows, cols) array; its NaN pixels stay NaN. ``relative_rms`` (rows, cols), when given, receives each
    pixel's correction RMS over its spectrum's RMS (the QA layer's ``lr_correction``)."""
    if tile.dtype != np.float32 or not tile.flags.c_contiguous:
        raise ModelError("add_correction needs a C-contiguous float32 (bands, rows, cols) tile.")
    work = _TileCorrection(correction, tile, row_off, col_off)
    whole = torch.from_numpy(tile)
    with torch.inference_mode():
        for rows in work.chunks():
            x = whole[:, rows].reshape(work.bands, -1)  # a view: whole rows of a contiguous tile
            delta = work.delta(x, rows)
            if relative_rms is not None:
                ratio = delta.square().mean(dim=0).sqrt() / x.square().mean(dim=0).sqrt()
                relative_rms[rows] = ratio.reshape(-1, work.cols).numpy()
            x.add_(delta)  # NaN pixels stay NaN
            if value_range is not None:
                x.clamp_(value_range[0], value_range[1])


def estimate_psf_central(lr_hsi: np.ndarray, read_hr, R: np.ndarray, grid: GridPair,
                         window: int = PSF_WINDOW, families: tuple[str, ...] = ("gaussian",)) -> PSFEstimate:
    """The blur from a central output window of at most ``window`` pixels a side and the LR pixels under it (not
    the whole scene: cheap, and plenty), a sub-pixel misregistration found on a smaller central window
    (``shift``, :func:`geolift.blur.find_shift`; the width is then fitted again with it), and a free-form kernel
    fitted on that smaller window: the floor its misfit sets (``free_residual``, see :func:`blur_model_problem`),
    and the kernel itself, returned instead of the parametric fit when that fit leaves more than
    :data:`FREE_KERNEL_SWITCH` times the free kernel's misfit on held-out pixels (the blur is then not of the
    family, and the free kernel's taps, misregistration included, are a better model). ``read_hr(Window)`` gives
    the HR-MSI there; the pipeline reads its file, :func:`refine` slices its array, so both estimate the same blur
    from the same pixels."""
    lr, hr_block, window_grid, outer = _central_window(lr_hsi, read_hr, grid, window)
    psf = estimate_psf(lr, hr_block, R, window_grid, families=families, fit_shift=False)

    def read_inside(w):  # both windows are central: the smaller one lies inside the block already read
        r0, c0 = w.row_off - outer.row_off, w.col_off - outer.col_off
        return hr_block[:, r0:r0 + w.height, c0:c0 + w.width]

    lr_small, hr_small, small_grid, _ = _central_window(
        lr_hsi, read_inside if FREE_KERNEL_WINDOW <= window else read_hr, grid, FREE_KERNEL_WINDOW)
    shift = find_shift(lr_small, hr_small, R, small_grid, psf)  # the same everywhere: the small window suffices
    if shift is not None:
        psf = refit_width(lr, hr_block, R, window_grid, psf, shift)
    ratio = 1.0 / min(grid.scale_y, grid.scale_x)
    radius = min(FREE_KERNEL_MAX_RADIUS, int(math.ceil(2.0 * ratio)))
    free = fit_free_kernel(lr_small, hr_small, R, small_grid, radius, min_radius=int(math.ceil(ratio / 2)))
    if free is None:
        return psf
    psf = dataclasses.replace(psf, free_residual=free.residual)
    same_pixels = misfit_on_pixels(lr_small, hr_small, R, small_grid, psf, free.mask)
    if not (math.isfinite(same_pixels) and same_pixels > FREE_KERNEL_SWITCH * max(free.held_out, MISFIT_FLOOR)):
        return psf
    log.info("The blur is not a %s kernel: its fit leaves %.3g of the variance where a free-form kernel of radius "
             "%d leaves %.3g on held-out pixels; the consistency step uses the free-form kernel.", psf.family,
             same_pixels, free.radius, free.held_out)
    candidates = [PSFEstimate("free", free.equivalent_width(), None, boundary, free.residual,
                              free_residual=free.residual, taps=free.taps, parametric_residual=psf.residual)
                  for boundary in ("nearest", "zero")]  # the border convention: as estimate_psf chooses it
    return min(candidates, key=lambda c: misfit_on_pixels(lr_small, hr_small, R, small_grid, c))


def blur_model_problem(psf: PSFEstimate) -> str | None:
    """Why the estimated blur model cannot carry the consistency step, or None when it can.

    When the parametric fit leaves :data:`MODEL_MISFIT_RATIO` times the variance a free-form kernel leaves on the
    same data, the blur is not of the family (``benchmarks/psf_zoo.py``: HyperBench's radial sinc and Gabor PSFs,
    21-1085 times, where the step cost up to 8.9 dB; its Gaussian, Moffat, Airy, Kolmogorov, Lorentzian, Hermite,
    parabolic and delta blurs 1.6-5.9 times; the real Berlin pair 1.2): the correction would add wrong detail, so
    the output stays the network's. :func:`estimate_psf_central` replaces such a fit by the free-form kernel
    wherever the data determine its taps, so this refusal is left for blurs the data cannot pin down either.
    """
    if psf.family == "free":
        return None  # the free-form kernel is its own floor
    floor = psf.free_residual
    if not math.isfinite(floor) or not math.isfinite(psf.residual):
        return None  # too small a scene to tell: keep the step, as before the check existed
    if psf.residual > MODEL_MISFIT_RATIO * max(floor, MISFIT_FLOOR):
        return (f"the blur does not look like a {psf.family} kernel (its fit leaves {psf.residual:.3g} of the "
                f"variance unexplained, {psf.residual / max(floor, MISFIT_FLOOR):.0f} times what a free-form kernel "
                "leaves), so a correction built on it would add wrong detail")
    return None


def _central_window(lr_hsi: np.ndarray, read_hr, grid: GridPair, window: int):
    """The LR-HSI, the HR-MSI and their grid pair on a central output window of at most ``window`` a side, and
    that window."""
    from affine import Affine
    from rasterio.windows import Window

    height, width = grid.hr_shape
    rows, cols = min(height, window), min(width, window)
    r0, c0 = (height - rows) // 2, (width - cols) // 2
    hr_window = Window(c0, r0, cols, rows)
    hr_block = read_hr(hr_window)
    ay, ax = grid.axis("y"), grid.axis("x")
    h, w = grid.lr_shape
    lr_r0 = int(np.clip(np.floor(ay.lr_coordinate(r0)), 0, h - 1))
    lr_r1 = int(np.clip(np.floor(ay.lr_coordinate(r0 + rows - 1)) + 1, lr_r0 + 1, h))
    lr_c0 = int(np.clip(np.floor(ax.lr_coordinate(c0)), 0, w - 1))
    lr_c1 = int(np.clip(np.floor(ax.lr_coordinate(c0 + cols - 1)) + 1, lr_c0 + 1, w))
    window_grid = GridPair(grid.hr_transform @ Affine.translation(c0, r0), (rows, cols),
                           grid.lr_transform @ Affine.translation(lr_c0, lr_r0), (lr_r1 - lr_r0, lr_c1 - lr_c0))
    return np.asarray(lr_hsi)[:, lr_r0:lr_r1, lr_c0:lr_c1], hr_block, window_grid, hr_window


# ----------------------------------------------------------------------------------------------- in memory
def refine(x0: np.ndarray, lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, ratio: float | None = None, *,
           grid: GridPair | None = None, psf: PSFEstimate | None = None,
           value_range: tuple[float, float] | None = None, regularization: float | None = None,
           subspace_rank: int | None = SUBSPACE_RANK, dark_fraction: float = 0.5,
           families: tuple[str, ...] = ("gaussian",), tile: int = REFINE_WINDOW
           ) -> tuple[np.ndarray, PSFEstimate, Correction]:
    """In-memory refinement of the network's output ``x0`` (C, H, W): both passes, as ``geolift fuse`` runs them.

    The same steps in the same order as the file pipeline: the blur estimated on the central window
    (:func:`estimate_psf_central`) unless ``psf`` is given (an estimated blur that :func:`blur_model_problem`
    refuses raises ``ModelError``), pass 1 over :data:`REFINE_WINDOW` windows reduced in
    :data:`REFINE_STRIP_ROWS` strips, the solve on the spectral basis, pass 2 in place window by window; so for the
    same arrays the result is the file pipeline's, bit for bit. Give ``ratio`` (Wald case: same origin, integer
    ratio) or ``grid``. Returns ``(x, psf, correction)``; NaN pixels of ``x0`` stay NaN; ``value_range`` clips the
    result (the model's ``data_range`` is the natural choice). ``subspace_rank=None`` solves on every band instead
    of a spectral basis (an ablation; the pipeline always uses the basis).
    """
    from geolift.grid import block_windows

    x0 = np.asarray(x0, dtype=np.float32)
    if x0.ndim != 3:
        raise ModelError(f"x0 must be a (bands, rows, cols) array, got shape {x0.shape}.")
    hr_msi = np.asarray(hr_msi)
    grid = _grid_for(grid, ratio, np.shape(lr_hsi)[1:], x0.shape[1:])
    if psf is None:
        psf = estimate_psf_central(lr_hsi, lambda w: hr_msi[:, w.row_off:w.row_off + w.height,
                                                            w.col_off:w.col_off + w.width], R, grid,
                                   families=families)
        problem = blur_model_problem(psf)
        if problem is not None:  # the pipeline skips the step for the same reason (SpectraLift.predict warns)
            raise ModelError(problem[0].upper() + problem[1:] + ".")
    grid = psf.registered(grid)  # a co-registration error the blur fit found, taken out (as the pipeline does)
    if subspace_rank is None:
        acc = LowResAccumulator(grid, psf, x0.shape[0])
        acc.add_tile(x0, 0, 0)
        corr = solve_correction(lr_hsi, acc.result(), R, acc.lr_kernel(), grid, regularization=regularization,
                                subspace_rank=None, dark_fraction=dark_fraction)
    else:
        basis = spectral_subspace(lr_hsi, subspace_rank)
        observed = lr_coefficients(lr_hsi, basis)
        acc = LowResAccumulator(grid, psf, n_bands=basis.shape[0], basis=basis)
        height, width = x0.shape[1:]
        for window in block_windows(width, height, REFINE_WINDOW):
            r0, c0 = int(window.row_off), int(window.col_off)
            block = x0[:, r0:r0 + int(window.height), c0:c0 + int(window.width)]
            maps = np.concatenate([acc.reduce(block[:, a:a + REFINE_STRIP_ROWS])
                                   for a in range(0, block.shape[1], REFINE_STRIP_ROWS)], axis=1)
            acc.add_maps(maps, r0, c0)
        corr = solve_on_basis(observed, acc.coefficients(in_place=True), basis, R, acc.lr_kernel(), grid,
                              regularization=regularization, dark_fraction=dark_fraction)
    x = np.empty_like(x0)
    height, width = x0.shape[1:]
    for window in block_windows(width, height, tile):
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        block = np.array(x0[:, rows, cols], dtype=np.float32, order="C")  # a copy: x0 stays the network's
        add_correction(corr, block, rows.start, cols.start, value_range)
        x[:, rows, cols] = block
    return x, psf, corr
