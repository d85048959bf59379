"""The pack's building blocks: glyph rendering and the transformations of the build script."""

import numpy as np
import pytest

from linfit.data import build_embedded, glyphs
from linfit.errors import DatasetError


def test_render_classes_is_deterministic_and_grouped():
    a, ya = glyphs.render_classes("AB", 3, seed=5, fonts=glyphs.DEJAVU)
    b, yb = glyphs.render_classes("AB", 3, seed=5, fonts=glyphs.DEJAVU)
    c, _ = glyphs.render_classes("AB", 3, seed=6, fonts=glyphs.DEJAVU)
    assert a.shape == (6, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, [0, 0, 0, 1, 1, 1])
    assert not np.array_equal(a, c)


def test_bbox_fit_fills_the_20px_box_and_cell_fit_keeps_position():
    rng = np.random.default_rng(0)
    img = glyphs.render("I", "DejaVuSans.ttf", rng, jitter=False)
    rows = np.flatnonzero(img.max(axis=1) > 0)
    assert 19 <= rows[-1] - rows[0] + 1 <= 22  # the longer side is scaled to ~20 of 28 px
    low, _ = glyphs.render_classes("⠁⠤", 1, seed=0, fonts=("DejaVuSans.ttf",), fit="cell", min_fonts=1)
    top_dot, bottom_pair = (np.argwhere(x > 128).mean(axis=0) for x in low)
    assert top_dot[0] < bottom_pair[0] - 5  # dot 1 stays above dots 3+6 in cell mode


def test_coverage_and_errors():
    assert glyphs.fonts_for("A") == glyphs.ALL_FONTS
    assert glyphs.fonts_for("א", glyphs.DEJAVU) == glyphs.DEJAVU[:4]  # only DejaVu Sans draws Hebrew
    with pytest.raises(DatasetError, match="fewer than 2 fonts"):
        glyphs.render_classes("א", 1, seed=0, fonts=glyphs.STIX)
    with pytest.raises(DatasetError, match="fit must be"):
        glyphs.render_classes("A", 1, seed=0, fit="tight")


def test_sobel_edges_match_a_direct_transcription():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 9, 9)).astype(np.uint8)
    p = np.pad(x.astype(float), ((0, 0), (1, 1), (1, 1)), mode="symmetric")  # scipy's "reflect" (edge sample repeated)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)  # d/dw; its transpose is d/dh
    gw = sum(kx[i, j] * p[:, i:i + 9, j:j + 9] for i in range(3) for j in range(3))
    gh = sum(kx.T[i, j] * p[:, i:i + 9, j:j + 9] for i in range(3) for j in range(3))
    mag = np.sqrt(gw ** 2 + gh ** 2)
    expected = np.rint(255 * mag / mag.max(axis=(1, 2), keepdims=True))
    np.testing.assert_array_equal(build_embedded._sobel_edges(x), expected)


def test_stratified_split_is_disjoint_and_respects_exclude():
    labels = np.repeat(np.arange(3), 20)
    tr, te = build_embedded._stratified_split(labels, 6, 4, seed=0, exclude=np.arange(0, 60, 2))
    assert not set(tr) & set(te) and all(i % 2 == 1 for i in np.concatenate([tr, te]))
    np.testing.assert_array_equal(np.bincount(labels[tr]), [6, 6, 6])
    np.testing.assert_array_equal(np.bincount(labels[te]), [4, 4, 4])
