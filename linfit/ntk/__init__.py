"""The empirical-NTK engine.

* :func:`empirical_ntk_fn` -- ``ntk_fn(x1, x2, params)`` with neural-tangents' semantics and three
  implementations (Jacobian contraction, NTK-vector products, structured derivatives) and ``"auto"``, the
  default, which picks the cheapest exact one by the cost model of :mod:`linfit.ntk.cost`; pytree inputs
  and outputs (one kernel per output leaf);
* :func:`per_layer_ntk_fn` -- the per-layer kernels Θ_l with Θ = Σ_l Θ_l (paper, Appendix A);
* :func:`ntk_vp_fn` / :func:`traced_ntk_vp_fn` -- matrix-free kernel-vector products for large N;
* :func:`kernel` -- the kernel for any N: planned from a memory budget (whole, tiles or Jacobian panels),
  over a ``jax.sharding.Mesh``, to host, device, a consumer or a resumable ``.npy`` memmap
  (:func:`plan_kernel` shows the plan); ``ntk_tiled``, ``sharded_ntk``, ``ntk_to_memmap`` are deprecated aliases;
* :func:`matrix_free_loss_curve`, :func:`streamed_kernel_label_correlation` -- large-N dynamics and LGC/LFC
  without an N×N array.
"""

from linfit.ntk.empirical import IMPLEMENTATIONS, NtkFn, empirical_ntk_fn
from linfit.ntk.entry import KernelPlan, kernel, plan_kernel
from linfit.ntk.large_n import matrix_free_loss_curve, streamed_kernel_label_correlation, traced_ntk_vp_fn
from linfit.ntk.products import ntk_vp_fn
from linfit.ntk.resumable import missing_tiles, ntk_to_memmap
from linfit.ntk.sharding import sample_mesh, sharded_ntk
from linfit.ntk.structured import per_layer_ntk_fn
from linfit.ntk.tiling import ntk_tiled, tile_size_for_budget

__all__ = [
    "IMPLEMENTATIONS",
    "KernelPlan",
    "NtkFn",
    "empirical_ntk_fn",
    "kernel",
    "matrix_free_loss_curve",
    "missing_tiles",
    "ntk_tiled",
    "ntk_to_memmap",
    "ntk_vp_fn",
    "per_layer_ntk_fn",
    "plan_kernel",
    "sample_mesh",
    "sharded_ntk",
    "streamed_kernel_label_correlation",
    "tile_size_for_budget",
    "traced_ntk_vp_fn",
]
