"""The streamed kernel-label correlation equals a dense Pearson correlation written here."""

import numpy as np
import pytest

from linfit.errors import NonFiniteError, ShapeError
from linfit.scores.correlation_stream import StreamedKernelLabelCorrelation


def _dense_pearson(kernel, labels):
    ky = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    return np.corrcoef(kernel.ravel(), ky.ravel())[0, 1]


@pytest.mark.parametrize("tile", [1, 7, 50])
def test_upper_triangle_tiles_equal_dense(tile):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=50)
    labels[:4] = np.arange(4)
    feats = rng.normal(size=(50, 6)) + labels[:, None]
    kernel = feats @ feats.T
    acc = StreamedKernelLabelCorrelation(labels)
    starts = range(0, 50, tile)
    for i in starts:
        for j in starts:
            if j < i:
                continue
            rows, cols = np.arange(i, min(i + tile, 50)), np.arange(j, min(j + tile, 50))
            acc.add(rows, cols, kernel[np.ix_(rows, cols)], mirror=j > i)
    assert acc.result() == pytest.approx(_dense_pearson(kernel, labels), rel=1e-10)


def test_incomplete_and_bad_tiles():
    labels = np.array([0, 1, 0, 1])
    acc = StreamedKernelLabelCorrelation(labels)
    acc.add(np.arange(2), np.arange(4), np.ones((2, 4)))
    with pytest.raises(ShapeError, match="needs all"):
        acc.result()
    with pytest.raises(ShapeError):
        acc.add(np.arange(2), np.arange(2), np.ones((2, 3)))
    with pytest.raises(NonFiniteError):
        acc.add(np.arange(2), np.arange(2), np.full((2, 2), np.nan))
