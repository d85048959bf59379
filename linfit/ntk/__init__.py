"""The empirical-NTK engine.

* :func:`empirical_ntk_fn` -- ``ntk_fn(x1, x2, params)`` with neural-tangents' semantics and three
  implementations (Jacobian contraction, NTK-vector products, structured derivatives) plus ``"auto"``;
* :func:`ntk_vp_fn` -- the matrix-free kernel-vector product ``v -> Theta v`` for large N;
* :func:`ntk_tiled` -- the kernel in sample tiles, to host memory or a memory-mapped file.
"""

from linfit.ntk.empirical import IMPLEMENTATIONS, NtkFn, empirical_ntk_fn
from linfit.ntk.products import ntk_vp_fn
from linfit.ntk.tiling import ntk_tiled, tile_grid, tile_size_for_budget

__all__ = [
    "IMPLEMENTATIONS",
    "NtkFn",
    "empirical_ntk_fn",
    "ntk_tiled",
    "ntk_vp_fn",
    "tile_grid",
    "tile_size_for_budget",
]
