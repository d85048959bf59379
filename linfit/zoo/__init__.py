"""The embedded model zoo (Deshpande et al. 2021, §5.2–5.3 at CPU scale): two architectures, each with a
generalist and per-source-domain experts (from scratch and from the generalist); resnet8 also has a
multi-domain BatchNorm expert whose 8 domains are 8 candidates.

Example::

    >>> from linfit import zoo
    >>> zoo.names()[:2]
    ['resnet8/generalist', 'resnet8/mnist/scratch']
    >>> m = zoo.load("resnet8/mnist/from-generalist")
    >>> m.model.apply(m.variables, x).shape          # x [N, 28, 28, 1] -> logits [N, 10]
"""

from linfit import _lazy

# Imported on first use: loading and building need JAX, the command line's parser does not.
_lazy.install(__name__, {
    "build": "linfit.zoo.builder",
    **dict.fromkeys(("WEIGHTS_DIR", "ZooModel", "load", "manifest", "names"), "linfit.zoo.registry"),
    **dict.fromkeys(("ARCHITECTURES", "KINDS", "Architecture", "Entry", "TrainConfig", "entries"), "linfit.zoo.spec"),
})

__all__ = [
    "ARCHITECTURES", "KINDS", "WEIGHTS_DIR", "Architecture", "Entry", "TrainConfig", "ZooModel",
    "build", "entries", "load", "manifest", "names",
]
