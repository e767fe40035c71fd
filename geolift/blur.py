"""The blur between the two grids: their geometry, the PSF families, and the PSF estimated from the data.

The synthetic LR-MSI ``Z = R·Y`` must equal the HR-MSI ``M`` blurred and aggregated to the LR grid, ``D(B*M)``.
:func:`estimate_psf` fits a parametric kernel (isotropic Gaussian, optionally Moffat) and the border convention by
least squares, jointly with a gain and offset per band so that a radiometric difference between the sensors does
not bias the width. The grids are two north-up affine transforms (:class:`GridPair`): along each axis an HR pixel
belongs to the LR pixel that contains its centre, so integer and non-integer ratios and offset origins are served by
the same code. The blur is a sum of at most a few separable terms (SVD of the kernel), so ``D·B`` is
``Σ_k Gy_k ⊗ Gx_k`` with sparse per-axis matrices. :mod:`geolift.refine` uses all of this for its consistency step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from scipy import optimize, sparse

from geolift.errors import AlignmentError, ModelError
from geolift.interpolation import keys_cubic

__all__ = ["GridPair", "PSFEstimate", "FreeKernelFit", "degrade", "estimate_psf", "fit_free_kernel"]

log = logging.getLogger("geolift")

_MAX_SEPARABLE_TERMS = 4
_SEPARABLE_TOLERANCE = 1e-3  # drop SVD terms below this share of the largest singular value


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class GridPair:
    """The HR and LR pixel grids of one scene: two north-up affine transforms in the same CRS, and their sizes.

    Along each axis, HR pixel ``c`` has its centre at LR pixel coordinate ``u = scale·(c + 0.5) + offset``; it
    sits at ``u - 0.5`` in LR pixel-centre units (interpolation); its extent counts for the LR pixels it overlaps
    (aggregation, :meth:`_Axis.aggregation`).
    """

    hr_transform: Affine
    hr_shape: tuple[int, int]
    lr_transform: Affine
    lr_shape: tuple[int, int]

    def __post_init__(self):
        for name in ("hr_transform", "lr_transform"):
            t = Affine(*tuple(getattr(self, name))[:6])
            if t.b != 0 or t.d != 0:
                raise AlignmentError("Rotated or sheared grids are not supported by the consistency step.")
            object.__setattr__(self, name, t)
        object.__setattr__(self, "hr_shape", (int(self.hr_shape[0]), int(self.hr_shape[1])))
        object.__setattr__(self, "lr_shape", (int(self.lr_shape[0]), int(self.lr_shape[1])))
        if self.scale_x <= 0 or self.scale_y <= 0:
            raise AlignmentError("The HR and LR grids must have the same orientation (both north-up).")
        if self.scale_x >= 1 or self.scale_y >= 1:
            raise AlignmentError("The HR grid must have smaller pixels than the LR grid.")

    @classmethod
    def aligned(cls, lr_shape: tuple[int, int], ratio: int | float) -> GridPair:
        """The Wald-protocol relation: HR grid ``ratio`` times finer, same origin (pixel units)."""
        h, w = int(lr_shape[0]), int(lr_shape[1])
        return cls(Affine.identity(), (round(h * ratio), round(w * ratio)), Affine.scale(float(ratio)), (h, w))

    @property
    def scale_x(self) -> float:
        return self.hr_transform.a / self.lr_transform.a

    @property
    def scale_y(self) -> float:
        return self.hr_transform.e / self.lr_transform.e

    @property
    def offset_x(self) -> float:
        return (self.hr_transform.c - self.lr_transform.c) / self.lr_transform.a

    @property
    def offset_y(self) -> float:
        return (self.hr_transform.f - self.lr_transform.f) / self.lr_transform.e

    @property
    def ratio(self) -> float:
        """Mean number of HR pixels per LR pixel side."""
        return 0.5 * (1.0 / self.scale_x + 1.0 / self.scale_y)

    def axis(self, which: str) -> _Axis:
        if which == "y":
            return _Axis(self.hr_shape[0], self.lr_shape[0], self.scale_y, self.offset_y)
        return _Axis(self.hr_shape[1], self.lr_shape[1], self.scale_x, self.offset_x)

    def shifted(self, dx: float, dy: float) -> GridPair:
        """The pair with the LR grid moved by (dx, dy) LR pixels: a co-registration error found in the data."""
        return GridPair(self.hr_transform, self.hr_shape, self.lr_transform @ Affine.translation(dx, dy),
                        self.lr_shape)

    def crop(self, hr_rows: tuple[int, int], hr_cols: tuple[int, int]) -> GridPair:
        """The pair for an HR window (and the full LR grid): used to estimate the PSF on part of a scene."""
        (r0, r1), (c0, c1) = hr_rows, hr_cols
        return GridPair(self.hr_transform * Affine.translation(c0, r0), (r1 - r0, c1 - c0),
                        self.lr_transform, self.lr_shape)


@dataclass(frozen=True)
class _Axis:
    n_hr: int
    n_lr: int
    scale: float
    offset: float

    def lr_coordinate(self, hr_index: np.ndarray) -> np.ndarray:
        return self.scale * (np.asarray(hr_index, dtype=np.float64) + 0.5) + self.offset

    def aggregation(self) -> sparse.csr_matrix:
        """(n_lr, n_hr) matrix: HR pixel c counts for each LR pixel by the share of its extent inside it.

        An LR pixel's value is the mean over its footprint, so an HR pixel cut by an LR pixel edge (a ratio
        such as 2.5, or grids whose edges do not line up) counts for both, in proportion; where the edges nest
        (edges within 1e-9 LR px of each other) every weight is exactly 0 or 1.
        """
        cols = np.arange(self.n_hr)
        start = self.scale * cols.astype(np.float64) + self.offset
        end = start + self.scale
        snap = np.round(start)
        start = np.where(np.abs(start - snap) < 1e-9, snap, start)
        snap = np.round(end)
        end = np.where(np.abs(end - snap) < 1e-9, snap, end)
        first = np.floor(start)
        split = np.ceil(end) - first > 1  # the pixel's extent crosses an LR edge (scale < 1: at most one)
        share = np.where(split, (first + 1 - start) / self.scale, 1.0)
        rows = np.concatenate([first, first[split] + 1]).astype(np.int64)
        where = np.concatenate([cols, cols[split]])
        weights = np.concatenate([share, 1.0 - share[split]])
        inside = (rows >= 0) & (rows < self.n_lr) & (weights > 0)
        return sparse.csr_matrix((weights[inside], (rows[inside], where[inside])), shape=(self.n_lr, self.n_hr))

    def cubic_taps(self, hr_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys cubic interpolation (a = -0.5) from LR pixel centres to the HR pixel centres ``hr_index``: the
        (n, 4) LR indices (edges clamped) and weights. They depend on the HR index alone, not on the tile."""
        position = self.lr_coordinate(hr_index) - 0.5
        index = np.floor(position).astype(np.int64)[:, None] + np.arange(-1, 3)
        return np.clip(index, 0, self.n_lr - 1), keys_cubic(position[:, None] - index)

    def interpolation(self, hr_index: np.ndarray | None = None) -> sparse.csr_matrix:
        """(n, n_lr) Keys cubic interpolation (a = -0.5) from LR pixel centres to HR pixel centres, edges clamped."""
        hr_index = np.arange(self.n_hr) if hr_index is None else np.asarray(hr_index)
        index, weight = self.cubic_taps(hr_index)
        rows = np.repeat(np.arange(len(hr_index)), 4)
        return sparse.csr_matrix((weight.ravel(), (rows, index.ravel())), shape=(len(hr_index), self.n_lr))


def _convolution(n: int, taps: np.ndarray, boundary: str) -> sparse.csr_matrix:
    """(n, n) matrix of a 1-D 'same' convolution with ``taps`` (odd length): zero or nearest-edge border."""
    k = len(taps) // 2
    rows, cols, vals = [], [], []
    out = np.arange(n)
    for t, weight in enumerate(taps):
        src = out + t - k  # taps are symmetric in use (isotropic kernels); correlation == convolution
        if boundary == "zero":
            keep = (src >= 0) & (src < n)
            rows.append(out[keep]), cols.append(src[keep]), vals.append(np.full(keep.sum(), weight))
        else:
            rows.append(out), cols.append(np.clip(src, 0, n - 1)), vals.append(np.full(n, weight))
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


# ----------------------------------------------------------------------------------------------- PSF
@dataclass(frozen=True)
class PSFEstimate:
    """A blur kernel in HR pixels, as estimated from the data (or given), and the border convention.

    ``family``: ``"gaussian"`` (``width`` = σ), ``"moffat"`` (``width`` = core α, ``beta``) or ``"free"`` (``taps``:
    a free-form kernel fitted to the data, :func:`fit_free_kernel`, used where no parametric family explains the
    blur; ``width`` = the σ of the Gaussian with the same second moment, for reports). ``boundary``:
    ``"nearest"`` (the scene continues like its edge, real sensors) or ``"zero"`` (dark outside, the Wald
    protocol's simulation convention) - whichever fits the data better. ``residual``: relative misfit of the fit
    (share of the LR-MSI variance left unexplained); ``gain``/``offset``: per MSI band, ``Z ≈ gain·D(B*M) + offset``.
    """

    family: str
    width: float
    beta: float | None = None
    boundary: str = "nearest"
    residual: float = float("nan")
    gain: np.ndarray | None = field(default=None, compare=False, repr=False)
    offset: np.ndarray | None = field(default=None, compare=False, repr=False)
    free_residual: float = field(default=float("nan"), compare=False)  # a free-form kernel's misfit, the floor
    shift: tuple[float, float] = (0.0, 0.0)  # (x, y) LR px the LR grid sits from where the transforms put it
    taps: np.ndarray | None = field(default=None, compare=False, repr=False)  # the free-form kernel (family "free")
    parametric_residual: float = field(default=float("nan"), compare=False)  # "free": the parametric fit it replaced

    def __post_init__(self):
        if (self.family == "free") != (self.taps is not None):
            raise ModelError("A free-form PSF needs its taps, and only a free-form PSF has taps.")
        if self.taps is not None:
            taps = np.asarray(self.taps, dtype=np.float64)
            if taps.ndim != 2 or taps.shape[0] != taps.shape[1] or taps.shape[0] % 2 == 0 or not taps.sum() > 0:
                raise ModelError(f"A free-form kernel must be a square, odd-sized array with a positive sum, got "
                                 f"shape {taps.shape}.")
            object.__setattr__(self, "taps", taps / taps.sum())

    def registered(self, grid: GridPair) -> GridPair:
        """``grid`` with the co-registration error this fit found taken out (itself when none was found)."""
        return grid.shifted(*self.shift) if any(self.shift) else grid

    @property
    def radius(self) -> int:
        if self.taps is not None:
            return self.taps.shape[0] // 2
        if self.family == "gaussian":
            return max(1, int(math.ceil(3.5 * self.width)))
        # where the Moffat profile falls to 1e-3 of its peak, capped
        reach = self.width * math.sqrt(1000.0 ** (1.0 / self.beta) - 1.0)
        return max(1, min(int(math.ceil(reach)), int(math.ceil(12 * self.width)) + 1))

    @property
    def fwhm(self) -> float:
        """Full width at half maximum in HR pixels (comparable across families; a free-form kernel's is that of the
        Gaussian with its second moment)."""
        if self.family in ("gaussian", "free"):
            return 2.0 * math.sqrt(2.0 * math.log(2.0)) * self.width
        return 2.0 * self.width * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0)

    def kernel(self) -> np.ndarray:
        """The (2·radius+1)² kernel, summing to 1."""
        if self.taps is not None:
            return self.taps
        offsets = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        r2 = offsets[None, :] ** 2 + offsets[:, None] ** 2
        if self.family == "gaussian":
            k = np.exp(-r2 / (2.0 * self.width**2))
        else:
            k = (1.0 + r2 / self.width**2) ** (-self.beta)
        return k / k.sum()


def _separable_terms(kernel: np.ndarray, exact: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Kernel ≈ Σ_k outer(col_k, row_k) (SVD, a few terms): a Gaussian needs one, a Moffat two or three.

    ``exact`` keeps every term above float64 rounding: a free-form kernel fitted to noisy data has no small
    singular values, and truncating it to a few terms cost 5-20 dB (Potsdam Wald cases under HyperBench's sinc,
    Gabor and Hermite PSFs)."""
    u, s, vt = np.linalg.svd(np.asarray(kernel, dtype=np.float64))
    terms = []
    for i in range(len(s) if exact else min(_MAX_SEPARABLE_TERMS, len(s))):
        if s[i] < (1e-12 if exact else _SEPARABLE_TOLERANCE) * s[0]:
            break
        terms.append((u[:, i] * math.sqrt(s[i]), vt[i] * math.sqrt(s[i])))
    return terms


@dataclass
class _BlurAggregate:
    """D·B on a grid pair as Σ_k Gy_k ⊗ Gx_k (sums, not means) plus the HR-pixel counts per LR pixel."""

    gy: list[sparse.csr_matrix]
    gx: list[sparse.csr_matrix]
    count_y: np.ndarray
    count_x: np.ndarray

    @classmethod
    def build(cls, grid: GridPair, kernel: np.ndarray, boundary: str, exact: bool = False) -> _BlurAggregate:
        ay, ax = grid.axis("y"), grid.axis("x")
        sy, sx = ay.aggregation(), ax.aggregation()
        gy, gx = [], []
        for col, row in _separable_terms(kernel, exact):
            gy.append((sy @ _convolution(ay.n_hr, col, boundary)).tocsr())
            gx.append((sx @ _convolution(ax.n_hr, row, boundary)).tocsr())
        return cls(gy, gx, np.asarray(sy.sum(axis=1)).ravel(), np.asarray(sx.sum(axis=1)).ravel())

    def sums(self, block: np.ndarray, rows: slice | None = None, cols: slice | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """LR sums ``Σ_k Gy_k[:, rows] · block · Gx_k[:, cols]ᵀ`` for a (bands, r, c) HR block (no NaN), added
        into ``out`` (bands, h, w) when given (only the LR pixels the block reaches are touched)."""
        bands, r, c = block.shape
        rows = rows or slice(0, r)
        cols = cols or slice(0, c)
        if out is None:
            out = np.zeros((bands, self.gy[0].shape[0], self.gx[0].shape[0]))
        flat = np.ascontiguousarray(block.transpose(1, 0, 2)).reshape(r, bands * c)  # (r, bands·c)
        for gy, gx in zip(self.gy, self.gx):
            gyt = gy[:, rows]
            gxt = gx[:, cols]
            active_y = np.flatnonzero(np.diff(gyt.indptr))
            active_x = np.flatnonzero(np.diff(gxt.indptr))
            step = np.asarray(gyt[active_y] @ flat).reshape(len(active_y) * bands, c)  # (ly·bands, c)
            part = np.asarray((gxt[active_x] @ step.T).T).reshape(len(active_y), bands, len(active_x))
            out[:, active_y[:, None], active_x[None, :]] += part.transpose(1, 0, 2)
        return out

    @classmethod
    def for_psf(cls, grid: GridPair, psf: PSFEstimate) -> _BlurAggregate:
        return cls.build(grid, psf.kernel(), psf.boundary, exact=psf.family == "free")

    @property
    def counts(self) -> np.ndarray:
        return np.outer(self.count_y, self.count_x)


def degrade(hr: np.ndarray, grid: GridPair, psf: PSFEstimate) -> np.ndarray:
    """``D(B*hr)``: blur with the PSF and average onto the LR grid; LR pixels with no HR pixel or a NaN give NaN."""
    return _degrade_with(_BlurAggregate.for_psf(grid, psf), hr)


def _degrade_with(op: _BlurAggregate, hr: np.ndarray) -> np.ndarray:
    hr = np.asarray(hr, dtype=np.float64)
    finite = np.all(np.isfinite(hr), axis=0)
    sums = op.sums(np.where(finite[None], hr, 0.0))
    reach = op.sums((~finite)[None].astype(np.float64))[0]
    counts = op.counts
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    out[:, (counts == 0) | (reach > 1e-9)] = np.nan
    return out


def _fit_misfit(z: np.ndarray, dbm: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Per band least squares z ≈ g·dbm + o on ``mask``; returns (share of z's variance unexplained, g, o)."""
    gains, offsets, unexplained, total = [], [], 0.0, 0.0
    for zb, db in zip(z, dbm):
        y, x = zb[mask], db[mask]
        xc, yc = x - x.mean(), y - y.mean()
        g = float(xc @ yc / max(xc @ xc, 1e-30))
        o = float(y.mean() - g * x.mean())
        unexplained += float(np.sum((yc - g * xc) ** 2))
        total += float(yc @ yc)
        gains.append(g), offsets.append(o)
    return unexplained / max(total, 1e-30), np.array(gains), np.array(offsets)


def estimate_psf(lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, grid: GridPair | None = None, *,
                 ratio: float | None = None, families: tuple[str, ...] = ("gaussian",),
                 boundaries: tuple[str, ...] = ("nearest", "zero"), fit_shift: bool = True) -> PSFEstimate:
    """Estimate the LR sensor's blur (in HR pixels) from the two observations.

    Minimises ``||R·Y - (gain·D(B*M) + offset)||²`` over the kernel's width (and shape for Moffat) and the border
    convention, on the LR pixels whose HR footprint lies inside ``hr_msi`` and that are finite. ``hr_msi`` may be a
    window of the scene (``grid`` then describes that window; see :meth:`GridPair.crop`), which keeps this cheap
    on large scenes. Give ``grid`` or, for the Wald case (same origin, integer ratio), ``ratio``. With
    ``fit_shift`` it also looks for a sub-pixel co-registration error (``shift``; :meth:`PSFEstimate.registered`
    gives the grid to use with it).
    """
    lr_hsi = np.asarray(lr_hsi, dtype=np.float64)
    hr_msi = np.asarray(hr_msi, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    grid = _grid_for(grid, ratio, lr_hsi.shape[1:], hr_msi.shape[1:])
    z = np.tensordot(R, lr_hsi, axes=1)
    r = grid.ratio
    best: PSFEstimate | None = None
    for boundary in boundaries:
        for family in families:
            betas = [None] if family == "gaussian" else [1.5, 2.5, 4.0]
            for beta in betas:
                def misfit(log_width: float, family=family, beta=beta, boundary=boundary) -> float:
                    psf = PSFEstimate(family, math.exp(log_width), beta, boundary)
                    return _psf_misfit(z, hr_msi, grid, psf)[0]

                lo, hi = math.log(0.1 * r), math.log(3.0 * r)
                res = optimize.minimize_scalar(misfit, bounds=(lo, hi), method="bounded",
                                               options={"xatol": 0.01})
                value, gain, offset = _psf_misfit(z, hr_msi, grid, PSFEstimate(family, math.exp(res.x), beta, boundary))
                candidate = PSFEstimate(family, float(math.exp(res.x)), beta, boundary, float(value), gain, offset)
                log.debug("PSF fit %s", candidate)
                if best is None or candidate.residual < best.residual:
                    best = candidate
    if best is None or not math.isfinite(best.residual):
        raise ModelError("The blur could not be estimated: the two scenes share no valid low-resolution pixel.")
    return _fit_shift(z, hr_msi, grid, best) if fit_shift else best


#: A co-registration error is taken out only when it is at least this large (LR px, along x or y) and its fit
#: leaves at most this share of the misfit without it: below that, well-registered pairs keep their nominal grid.
MIN_SHIFT, SHIFT_GAIN = 0.05, 0.8


def _fit_shift(z: np.ndarray, hr_msi: np.ndarray, grid: GridPair, psf: PSFEstimate) -> PSFEstimate:
    shift = _search_shift(z, hr_msi, grid, psf)
    return psf if shift is None else _refit_width(z, hr_msi, grid, psf, shift)


def find_shift(lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, grid: GridPair,
               psf: PSFEstimate) -> tuple[float, float] | None:
    """A sub-pixel misregistration of the LR grid (x, y LR px, each within half a pixel) that explains the data
    clearly better than none with the blur ``psf`` (see :data:`MIN_SHIFT`, :data:`SHIFT_GAIN`), or None.

    Two products of one place are often misregistered by a fraction of a pixel even after alignment, and the
    consistency step would copy that into the output as misplaced detail. Nelder-Mead over the shift, on whatever
    window the caller gives (a small central one is plenty: the shift is the same everywhere)."""
    z = np.tensordot(np.asarray(R, np.float64), np.asarray(lr_hsi, np.float64), axes=1)
    return _search_shift(z, np.asarray(hr_msi, dtype=np.float64), grid, psf)


def refit_width(lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, grid: GridPair, psf: PSFEstimate,
                shift: tuple[float, float]) -> PSFEstimate:
    """``psf`` with its width fitted again on the grid moved by ``shift``, and that shift recorded."""
    z = np.tensordot(np.asarray(R, np.float64), np.asarray(lr_hsi, np.float64), axes=1)
    return _refit_width(z, np.asarray(hr_msi, dtype=np.float64), grid, psf, shift)


def _search_shift(z: np.ndarray, hr_msi: np.ndarray, grid: GridPair, psf: PSFEstimate
                  ) -> tuple[float, float] | None:
    def misfit(params: np.ndarray) -> float:
        if np.max(np.abs(params)) > 0.5:
            return float("inf")
        return _psf_misfit(z, hr_msi, grid.shifted(*params), psf)[0]

    at_zero = misfit(np.zeros(2))
    res = optimize.minimize(misfit, np.zeros(2), method="Nelder-Mead",
                            options={"initial_simplex": [[0.0, 0.0], [0.25, 0.0], [0.0, 0.25]], "xatol": 0.01,
                                     "fatol": 1e-3 * at_zero, "maxfev": 60})
    dx, dy = (float(v) for v in res.x)
    if max(abs(dx), abs(dy)) < MIN_SHIFT or not res.fun <= SHIFT_GAIN * at_zero:
        return None
    log.debug("co-registration error found: %.3f, %.3f LR px (misfit %.3g -> %.3g)", dx, dy, at_zero, res.fun)
    return dx, dy


def _refit_width(z: np.ndarray, hr_msi: np.ndarray, grid: GridPair, psf: PSFEstimate,
                 shift: tuple[float, float]) -> PSFEstimate:
    moved = grid.shifted(*shift)

    def width_misfit(log_width: float) -> float:
        return _psf_misfit(z, hr_msi, moved, dataclasses.replace(psf, width=math.exp(log_width)))[0]

    r = grid.ratio
    found = optimize.minimize_scalar(width_misfit, bounds=(math.log(0.1 * r), math.log(3.0 * r)), method="bounded",
                                     options={"xatol": 0.01})
    candidate = dataclasses.replace(psf, width=float(math.exp(found.x)), shift=(float(shift[0]), float(shift[1])))
    value, gain, offset = _psf_misfit(z, hr_msi, moved, candidate)
    return dataclasses.replace(candidate, residual=float(value), gain=gain, offset=offset)


#: The free-form kernel fit uses at most this many equations per unknown (a regular subsample of the LR pixels):
#: its design matrix then stays below ~65 MB (radius 12: 629 unknowns) however large the window or many the bands.
FREE_FIT_EQUATIONS_PER_UNKNOWN = 20


@dataclass(frozen=True)
class FreeKernelFit:
    """A free-form blur kernel fitted to the data (:func:`fit_free_kernel`) and how well it explains them.

    ``residual``: share of the LR-MSI variance it leaves (the floor a parametric fit is held against);
    ``held_out``: the same share on LR pixels left out of the fit (two interleaved halves, each predicted from the
    other), which says whether so many taps are determined by the data or fit their noise; ``mask``: the LR pixels
    of the window that took part.
    """

    taps: np.ndarray
    residual: float
    held_out: float
    mask: np.ndarray

    @property
    def radius(self) -> int:
        return self.taps.shape[0] // 2

    def equivalent_width(self) -> float:
        """σ (HR px) of the Gaussian with the kernel's second moment about its centre of mass (for reports)."""
        k = self.taps / self.taps.sum()
        offsets = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        my, mx = float(k.sum(axis=1) @ offsets), float(k.sum(axis=0) @ offsets)
        second = float(np.sum(k * ((offsets[:, None] - my) ** 2 + (offsets[None, :] - mx) ** 2))) / 2.0
        return math.sqrt(second) if second > 0 else float("nan")


def _least_squares(columns: np.ndarray, y: np.ndarray) -> np.ndarray:
    gram = columns.T @ columns
    ridge = 1e-6 * np.trace(gram) / gram.shape[0]
    return np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), columns.T @ y)


def fit_free_kernel(lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, grid: GridPair,
                    max_radius: int, min_radius: int = 1) -> FreeKernelFit | None:
    """A free-form blur kernel fitted by least squares over its taps, one offset per band.

    ``R·Y ≈ Σ_k h_k · D(shift_k M) + offset_b`` over the LR pixels the kernel's reach keeps inside ``hr_msi``: the
    misfit it leaves is the floor that noise, misregistration and radiometry set, whatever the blur's shape, and
    the taps are the blur itself where no parametric family fits (a sinc with strong negative side lobes, say).
    The taps correlate: ``h[dy, dx]`` weighs the HR pixel ``dy`` rows and ``dx`` columns away, as
    :func:`_convolution` applies them. On a small scene the kernel shrinks (down to ``min_radius``) until there
    are three equations per unknown; None when even that is too many.
    """
    z = np.tensordot(np.asarray(R, np.float64), np.asarray(lr_hsi, np.float64), axes=1)  # (m, h, w)
    hr = np.asarray(hr_msi, dtype=np.float64)
    m, h, w = z.shape
    sy, sx = grid.axis("y").aggregation(), grid.axis("x").aggregation()
    counts = np.outer(np.asarray(sy.sum(axis=1)).ravel(), np.asarray(sx.sum(axis=1)).ravel())
    usable = (counts > 0) & np.all(np.isfinite(z), axis=0)
    for radius in range(max_radius, min_radius - 1, -1):
        margin_y, margin_x = math.ceil(radius * grid.scale_y), math.ceil(radius * grid.scale_x)
        keep = np.zeros((h, w), bool)
        keep[margin_y:h - margin_y, margin_x:w - margin_x] = True
        keep &= usable
        taps = (2 * radius + 1) ** 2
        if keep.sum() * m >= 3 * (taps + m):
            break
    else:
        return None
    spare = int(keep.sum()) * m // (FREE_FIT_EQUATIONS_PER_UNKNOWN * (taps + m))
    if spare > 1:  # plenty of pixels: every ``spare``-th is enough, and the design matrix stays small
        kept = np.flatnonzero(keep.ravel())
        keep = np.zeros(h * w, bool)
        keep[kept[::spare]] = True
        keep = keep.reshape(h, w)
    padded = np.pad(hr, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    n = int(keep.sum())
    columns = np.empty((n * m, taps + m))
    k = 0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[:, radius + dy:radius + dy + hr.shape[1], radius + dx:radius + dx + hr.shape[2]]
            means = np.stack([(sy @ band @ sx.T) for band in shifted]) / np.maximum(counts, 1)
            columns[:, k] = means[:, keep].ravel()
            k += 1
    for b in range(m):
        columns[:, taps + b] = np.repeat(np.arange(m) == b, n)
    y = z[:, keep].ravel()
    if not np.all(np.isfinite(columns)):
        return None
    observed = y.reshape(m, -1)
    total = max(float(np.sum((observed - observed.mean(axis=1, keepdims=True)) ** 2)), 1e-30)
    coef = _least_squares(columns, y)
    residual = y - columns @ coef
    half = np.tile(np.arange(n) % 2 == 0, m)  # every other LR pixel in raster order: two interleaved halves
    held_out = 0.0
    for fit_on in (half, ~half):
        part = _least_squares(columns[fit_on], y[fit_on])
        miss = y[~fit_on] - columns[~fit_on] @ part
        held_out += float(miss @ miss)
    return FreeKernelFit(coef[:taps].reshape(2 * radius + 1, 2 * radius + 1), float(residual @ residual) / total,
                         held_out / total, keep)


def misfit_on_pixels(lr_hsi: np.ndarray, hr_msi: np.ndarray, R: np.ndarray, grid: GridPair, psf: PSFEstimate,
                     mask: np.ndarray | None = None) -> float:
    """The share of the LR-MSI variance ``psf`` (on its registered grid, with a gain and offset per band) leaves
    on the LR pixels whose footprint the HR grid covers, within ``mask`` when given: a parametric fit's misfit where
    a free-form kernel's was measured, or a free-form kernel's under each border convention."""
    z = np.tensordot(np.asarray(R, np.float64), np.asarray(lr_hsi, np.float64), axes=1)
    return _psf_misfit(z, np.asarray(hr_msi, np.float64), psf.registered(grid), psf, mask)[0]


def _psf_misfit(z: np.ndarray, hr_msi: np.ndarray, grid: GridPair, psf: PSFEstimate, within: np.ndarray | None = None):
    op = _BlurAggregate.for_psf(grid, psf)  # once per evaluation: its counts serve the mask
    dbm = _degrade_with(op, hr_msi)
    full = op.counts >= 0.999 / (grid.scale_y * grid.scale_x)  # LR pixels whose whole footprint is on the HR grid
    mask = full & np.all(np.isfinite(z), axis=0) & np.all(np.isfinite(dbm), axis=0)
    if within is not None:
        mask &= within
    if mask.sum() < 4:
        return float("inf"), None, None
    return _fit_misfit(z, dbm, mask)


def _grid_for(grid: GridPair | None, ratio, lr_shape, hr_shape) -> GridPair:
    if grid is None:
        if ratio is None:
            raise ModelError("Give either the grid pair (two transforms) or the integer ratio of the Wald case.")
        grid = GridPair.aligned(lr_shape, ratio)
    if tuple(grid.lr_shape) != tuple(lr_shape) or tuple(grid.hr_shape) != tuple(hr_shape):
        raise ModelError(f"The grid pair describes LR {grid.lr_shape} / HR {grid.hr_shape} pixels but the arrays "
                         f"are LR {tuple(lr_shape)} / HR {tuple(hr_shape)}.")
    return grid
