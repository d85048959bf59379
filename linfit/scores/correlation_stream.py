"""Kernel-label correlation accumulated tile by tile, for kernels too large to hold (the paper's eq. 8).

The LGC/LFC score is the Pearson correlation between the N² entries of a kernel K and of the label-similarity
matrix K_Y (K_Y,ij = +1 if y_i = y_j else −1), centred by scalar means and normalised by Frobenius norms:

    S = (Σ K∘K_Y − N² μ_K μ_Y) / ( sqrt(Σ K² − N² μ_K²) · sqrt(Σ K_Y² − N² μ_Y²) ).

Only three sums over K are needed — Σ K_ij, Σ K_ij², Σ K_ij K_Y,ij — and the label side is closed form in the
class counts n_c: Σ K_Y = 2 Σ_c n_c² − N² and Σ K_Y² = N². Each tile of rows × cols adds to the three sums, so the
kernel is never held whole; a tile of a symmetric kernel computed once for (rows, cols) with rows ≠ cols counts
twice (``mirror=True``).

Example::

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); k = np.eye(4) + (y[:, None] == y[None, :])
    >>> acc = StreamedKernelLabelCorrelation(y)
    >>> acc.add(np.arange(4), np.arange(4), k)
    >>> round(acc.result(), 6)
    0.904534
"""

from __future__ import annotations

import numpy as np

from linfit.errors import NonFiniteError, ShapeError
from linfit.scores.correlation import correlation_from_sums
from linfit.scores.validation import check_labels


class StreamedKernelLabelCorrelation:
    """Accumulates Σ K, Σ K², Σ K∘K_Y over tiles of an [N, N] kernel; ``result()`` gives the Pearson score."""

    def __init__(self, labels):
        self.labels, _ = check_labels(labels)
        self.n = self.labels.size
        self._sum = 0.0
        self._sum_sq = 0.0
        self._sum_same_class = 0.0  # Σ over pairs with y_i = y_j of K_ij
        self._entries = 0

    def add(self, rows, cols, tile, *, mirror: bool = False) -> None:
        """Add the tile ``K[rows][:, cols]`` (``[len(rows), len(cols)]``); ``mirror=True`` also counts its
        transpose ``K[cols][:, rows]`` (for a symmetric kernel computed on upper-triangle tiles only)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        tile = np.asarray(tile, dtype=np.float64)
        if tile.shape != (rows.size, cols.size):
            raise ShapeError(f"tile has shape {tile.shape}, expected {(rows.size, cols.size)} for these rows/cols")
        if not np.all(np.isfinite(tile)):
            raise NonFiniteError("a kernel tile contains NaN or infinite values")
        weight = 2.0 if mirror else 1.0
        same = self.labels[rows][:, None] == self.labels[cols][None, :]
        self._sum += weight * tile.sum()
        self._sum_sq += weight * np.square(tile).sum()
        self._sum_same_class += weight * tile[same].sum()
        self._entries += int(weight) * tile.size

    def result(self) -> float:
        """The Pearson correlation between K and K_Y once all N² entries have been added."""
        if self._entries != self.n * self.n:
            raise ShapeError(f"{self._entries} kernel entries were added; the score needs all N²={self.n ** 2}")
        return correlation_from_sums(self._sum, self._sum_sq, self._sum_same_class, np.bincount(self.labels))
