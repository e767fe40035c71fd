"""The reliability layer: per output pixel, how far to trust the fused spectrum, and why a pixel is nodata.

``geolift fuse --qa PATH`` writes it beside the HR-HSI, on the same grid, block by block with it. Its bands
(descriptions name them):

1. ``srf_residual``: ``‖R·x − m‖ / ‖m‖``, how far the fused spectrum ``x``, seen through the MSI's responses, is from
   the MSI pixel ``m`` the network was given (relative; the network alone keeps it small, the consistency step
   keeps it unchanged, so a high value marks a pixel the network could not reproduce; the default recipe's MSI
   update leaves a fixed share of that misfit, ``λ(RSRᵀ + λI)⁻¹`` of it, see ``geolift.model.msi_update_gain``).
2. ``lr_correction``: the RMS of the consistency step's correction at the pixel, relative to the RMS of its
   spectrum: how much the LR-HSI disagreed with the network here (NaN when the step did not run).
3. ``novelty``: the distance of the pixel's MSI spectrum to the nearest spectrum the network was trained on, in
   units of the distance between neighbouring training spectra (:class:`NoveltyIndex`). Up to 1: like what it was
   trained on; above :data:`NOVEL` (3): a material, or a purity, the LR-HSI did not show, so the network
   extrapolates.
4. ``nodata_reason``: 0 a valid pixel, 1 the MSI has no data there, 2 outside the HSI's valid footprint.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["NODATA_NO_MSI", "NODATA_OUTSIDE_HSI", "NODATA_VALID", "NOVEL", "QA_BANDS", "NoveltyIndex",
           "srf_residual"]

QA_BANDS = ("srf_residual", "lr_correction", "novelty", "nodata_reason")
NODATA_VALID, NODATA_NO_MSI, NODATA_OUTSIDE_HSI = 0, 1, 2
#: A novelty above this is outside what the network was trained on.
NOVEL = 3.0
#: Training spectra kept for the novelty index (a random sample; enough to describe what the network has seen).
_MAX_POINTS = 8192
#: The unit of novelty: this percentile of the distances between training spectra and their nearest neighbour.
_TYPICAL_PERCENTILE = 95


class NoveltyIndex:
    """Distance of MSI spectra to the synthetic LR-MSI spectra the network was trained on.

    Bands are scaled by their spread in the training set; a distance is divided by the distance within which 95 %
    of the training spectra have another training spectrum, so up to 1 means "as close to the training set as
    training spectra are to each other". Picklable (the k-d tree is rebuilt where it is used).
    """

    def __init__(self, spectra: np.ndarray, seed: int = 0) -> None:
        points = np.asarray(spectra, dtype=np.float64)
        points = points[np.isfinite(points).all(axis=1)]
        if points.shape[0] > _MAX_POINTS:
            points = points[np.random.default_rng(seed).choice(points.shape[0], _MAX_POINTS, replace=False)]
        self.scale = np.where(points.std(axis=0) > 0, points.std(axis=0), 1.0) if points.size else None
        self.points = points / self.scale if points.size else points
        self.typical = math.nan
        if self.points.shape[0] >= 2:
            distances, _ = self._tree().query(self.points, k=2)
            self.typical = float(np.percentile(distances[:, 1], _TYPICAL_PERCENTILE)) or 1.0
        self._kdtree = None

    def _tree(self) -> cKDTree:
        if getattr(self, "_kdtree", None) is None:
            self._kdtree = cKDTree(self.points)
        return self._kdtree

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_kdtree"}

    def score(self, msi_block: np.ndarray) -> np.ndarray:
        """``(rows, cols)`` novelty of each pixel of an MSI block ``(m, rows, cols)``; NaN where it has no data."""
        m, rows, cols = msi_block.shape
        out = np.full(rows * cols, np.nan, np.float32)
        if not math.isfinite(self.typical):
            return out.reshape(rows, cols)
        pixels = msi_block.reshape(m, -1).T
        valid = np.isfinite(pixels).all(axis=1)
        if valid.any():
            distances, _ = self._tree().query(pixels[valid] / self.scale, k=1)
            out[valid] = distances / self.typical
        return out.reshape(rows, cols)


def srf_residual(response: np.ndarray, fused_good: np.ndarray, msi_block: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` relative residual ``‖R·x − m‖ / ‖m‖`` (NaN where either has no data)."""
    bands, rows, cols = fused_good.shape
    synthetic = np.asarray(response, np.float32) @ fused_good.reshape(bands, -1)
    msi = msi_block.reshape(msi_block.shape[0], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.linalg.norm(synthetic - msi, axis=0) / np.linalg.norm(msi, axis=0)
    return out.astype(np.float32).reshape(rows, cols)
