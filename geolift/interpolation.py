"""Cubic convolution (Keys 1981), the interpolation kernel of the bicubic baseline and of the consistency step.

R. Keys, "Cubic convolution interpolation for digital image processing", IEEE Trans. ASSP 29(6), 1981.
"""

from __future__ import annotations

import numpy as np

__all__ = ["keys_cubic"]


def keys_cubic(s: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The kernel's weight at distance ``s`` (in pixels); a = -0.5 makes it third-order accurate."""
    s = np.abs(s)
    near = (a + 2) * s**3 - (a + 3) * s**2 + 1
    far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))
