"""The linearized model: a first-order Taylor expansion of a network around its pre-trained weights.

Deshpande et al. 2021 (arXiv 2102.00084), Eq. (1):

    f_lin(w, x) = f(w0, x) + J_w f(w0, x) (w - w0)

``f_lin`` is computed with ONE ``jax.jvp`` (a forward pass and a tangent pass); the Jacobian is never
materialised, so it costs about two forward passes whatever the parameter count.

Example::

    >>> import jax.numpy as jnp
    >>> f = lambda p, x: jnp.tanh(x @ p["w"])
    >>> p0 = {"w": jnp.ones((3, 2))}
    >>> f_lin = linearize(f, p0)
    >>> x = jnp.ones((4, 3))
    >>> bool(jnp.allclose(f_lin(p0, x), f(p0, x)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from linfit.tree import check_same_structure

ApplyFn = Callable[[Any, Any], Any]


def linearize(f: ApplyFn, params0: Any) -> ApplyFn:
    """Linearize ``f`` in its parameters around ``params0``.

    Args:
      f: a pure ``apply_fn(params, x) -> y`` (``y`` an array such as logits ``[N, O]``, or a pytree);
        non-trainable state (BatchNorm statistics) must be closed over.
      params0: the expansion point ``w0`` (the pre-trained weights).

    Returns:
      ``f_lin(params, x) = f(params0, x) + J(x) (params - params0)``, same output structure and shapes
      as ``f(params0, x)``. Each call runs one ``jax.jvp``; wrap it in ``jax.jit`` as usual.

    Raises:
      TreeMismatchError: ``params`` does not have the paths and leaf shapes of ``params0``.
    """

    def f_lin(params: Any, x: Any) -> Any:
        check_same_structure(params0, params)
        delta = jax.tree_util.tree_map(lambda p, p0: p - p0, params, params0)
        y0, dy = jax.jvp(lambda p: f(p, x), (params0,), (delta,))
        return jax.tree_util.tree_map(lambda a, b: a + b, y0, dy)

    return f_lin
