"""linfit: predict fine-tuning from the linearized model, without fine-tuning.

Deshpande et al. 2021, "A linearized framework and a new benchmark for model selection for
fine-tuning" (arXiv 2102.00084).
"""

from linfit.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    InputValueError,
    KernelError,
    LabelError,
    LinfitError,
    NonFiniteError,
    ParamsFilterError,
    ShapeError,
    TreeMismatchError,
    UnknownNameError,
    VmapAxesError,
)

from linfit import _lazy

# JAX-backed names are imported on first use (``linfit --help`` stays fast).
_lazy.install(__name__, {
    **dict.fromkeys(("CETrajectory", "LinearizedDynamics", "gradient_descent_mse", "linearized_ce_trajectory",
                     "linearized_loss_curve"), "linfit.dynamics"),
    "linearize": "linfit.linearize",
    **dict.fromkeys(("empirical_ntk_fn", "ntk_vp_fn", "per_layer_ntk_fn"), "linfit.ntk"),
})

__version__ = "0.1.0"
