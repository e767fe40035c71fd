"""Cubic convolution (Keys 1981), the interpolation kernel of the bicubic baseline and of the consistency step.

R. Keys, "Cubic convolution interpolation for digital image processing", IEEE Trans. ASSP 29(6), 1981.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["keys_cubic", "SeparableCubic"]


def keys_cubic(s: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The kernel's weight at distance ``s`` (in pixels); a = -0.5 makes it third-order accurate."""
    s = np.abs(s)
    near = (a + 2) * s**3 - (a + 3) * s**2 + 1
    far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


class SeparableCubic:
    """4-tap separable interpolation of (k, h, w) maps to a block of output rows and columns, in float32.

    Columns first, for the whole block at once (the maps are small: only the LR rows the block reaches), then rows,
    a few output rows at a time on request (:meth:`rows`), so the output never exists at full block size and each
    piece is used while it is in the CPU cache. Every output value is the sum of its own four products in a fixed
    order, one IEEE rounding per operation: it depends on the pixel alone, not on the block or on the row range
    asked for, on any kernel (no product of sums that a BLAS could reorder or fuse).

    ``row_taps``/``col_taps``: (index, weight) pairs of (n, 4) arrays, the LR indices (already clamped into the
    maps) and weights of each output row and column.
    """

    def __init__(self, maps: list[np.ndarray], row_taps: tuple[np.ndarray, np.ndarray],
                 col_taps: tuple[np.ndarray, np.ndarray]):
        (iy, wy), (ix, wx) = row_taps, col_taps
        y0, x0 = int(iy.min()), int(ix.min())
        iy, ix = iy - y0, ix - x0
        wx = wx.astype(np.float32)
        lr = np.concatenate([m[:, y0:int(iy.max()) + y0 + 1, x0:int(ix.max()) + x0 + 1] for m in maps])
        lr = lr.astype(np.float32, copy=False)
        across = lr[:, :, ix[:, 0]] * wx[:, 0]  # (K, h, cols)
        for t in range(1, 4):
            across += lr[:, :, ix[:, t]] * wx[:, t]
        self.across = torch.from_numpy(np.ascontiguousarray(across))  # fancy indexing left it column-major
        self.maps, self.cols = across.shape[0], across.shape[2]
        self.index = torch.from_numpy(np.ascontiguousarray(iy.T))  # (4, rows): tap t of every output row
        self.weight = torch.from_numpy(np.ascontiguousarray(wy.T.astype(np.float32)))

    def rows(self, rows: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        """The interpolated maps on output ``rows``: (K, len(rows), cols) float32, into ``out`` if given."""
        index, weight = self.index[:, rows], self.weight[:, rows]
        n = index.shape[1]
        if out is None:
            out = torch.empty((self.maps, n, self.cols), dtype=torch.float32)
        torch.mul(self.across.index_select(1, index[0]), weight[0].view(1, n, 1), out=out)
        for t in range(1, 4):
            out.add_(self.across.index_select(1, index[t]).mul_(weight[t].view(1, n, 1)))
        return out
