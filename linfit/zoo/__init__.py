"""The embedded model zoo (Deshpande et al. 2021, §5.2–5.3 at CPU scale): two architectures, each with a
generalist, per-source-domain experts (from scratch and from the generalist) and a multi-domain BatchNorm
expert whose 8 domains are 8 candidates.

Example::

    >>> from linfit import zoo
    >>> zoo.names()[:2]
    ['resnet8/generalist', 'resnet8/mnist/scratch']
    >>> m = zoo.load("resnet8/mnist/from-generalist")
    >>> m.model.apply(m.variables, x).shape          # x [N, 28, 28, 1] -> logits [N, 10]
"""

from linfit.zoo.builder import build
from linfit.zoo.registry import WEIGHTS_DIR, ZooModel, load, manifest, names
from linfit.zoo.spec import ARCHITECTURES, KINDS, Architecture, Entry, TrainConfig, entries

__all__ = [
    "ARCHITECTURES", "KINDS", "WEIGHTS_DIR", "Architecture", "Entry", "TrainConfig", "ZooModel",
    "build", "entries", "load", "manifest", "names",
]
