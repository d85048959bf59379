"""Model-selection scores: one family per module, a registry by name; higher is always better.

``linfit.scores.get(name)`` returns a :class:`Score` that declares the shared inputs it needs
(``Score.needs``; see :mod:`linfit.scores.registry`); the array-level functions are importable by name with
labels last, e.g. ``lfc(features, labels)``, ``leep(source_probs, labels)``, ``logme(features, labels)``. One
exception: ``nce(source_labels, labels)`` takes hard source labels; the registered score ``"nce"`` applies it to
the argmax of ``source_probs`` (``linfit.scores.nce.nce_from_probs``).
Labels are integer classes ``0..C-1`` or class names (strings, any hashable values of one orderable type), which
every score encodes the same way, by their sorted order (``linfit.scores.validation.encode_labels``).
"""

from linfit.scores.correlation import kernel_label_correlation, lfc
from linfit.scores.domain_similarity import domain_similarity, earth_movers_distance
from linfit.scores.feature_metrics import feature_metrics
from linfit.scores.gbc import gbc
from linfit.scores.hscore import h_score, ledoit_wolf, regularized_h_score
from linfit.scores.leep import leep
from linfit.scores.lgc import lgc, lgc_kernel
from linfit.scores.linearized import linearized_cv_accuracy, linearized_loss
from linfit.scores.logme import logme
from linfit.scores.nce import nce
from linfit.scores.nleep import nleep
from linfit.scores.parc import parc
from linfit.scores.probe import knn, linear_probe
from linfit.scores.random_score import random_score
from linfit.scores.registry import INPUT_NAMES, Score, get, names, register
from linfit.scores.rsa import rsa
from linfit.scores.sfda import sfda
from linfit.scores.transrate import transrate

__all__ = [
    "INPUT_NAMES", "Score", "domain_similarity", "earth_movers_distance", "feature_metrics", "gbc", "get",
    "h_score", "kernel_label_correlation", "knn", "ledoit_wolf", "leep", "lfc", "lgc", "lgc_kernel",
    "linear_probe", "linearized_cv_accuracy", "linearized_loss", "logme", "names", "nce", "nleep", "parc",
    "random_score", "register", "regularized_h_score", "rsa", "sfda", "transrate",
]
