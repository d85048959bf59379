"""linfit: predict fine-tuning from the linearized model, without fine-tuning.

Deshpande et al. 2021, "A linearized framework and a new benchmark for model selection for
fine-tuning" (arXiv 2102.00084).
"""

from linfit.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    LabelError,
    LinfitError,
    NonFiniteError,
    ParamsFilterError,
    ShapeError,
    TreeMismatchError,
    UnknownNameError,
    VmapAxesError,
)

__version__ = "0.1.0"
