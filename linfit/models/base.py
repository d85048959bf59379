"""The interface every linfit backbone implements.

A backbone is a ``flax.linen.Module`` with

* ``features(x, train=False) -> phi [N, D]``: the penultimate features (post-ReLU, after global
  average pooling);
* ``__call__(x, train=False) -> logits [N, C] = head(features(x))`` where ``head`` is an ``nn.Dense``
  submodule, so ``variables["params"]["head"]`` is the replaceable classification head;
* ``num_classes`` (``C``), a dataclass field, so ``model.clone(num_classes=C2)`` builds a new head;
* ``subset_filters()``: the params filters ``"last_conv"`` and ``"last_block"`` (see
  :func:`linfit.models.param_subsets`);
* ``torch_module_name(path)``: the torchvision/timm module name of a '/'-joined linfit module path,
  used by :func:`linfit.checkpoints.load_torchvision`.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax


class Backbone(nn.Module):
    """Base class: ``__call__ = head(features(x))``; subclasses define ``setup`` and ``features``."""

    torch_head_name: ClassVar[str] = "fc"

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[N, C]`` of NHWC images ``x [N, H, W, C]``."""
        return self.head(self.features(x, train))

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Penultimate features ``[N, D]``."""
        raise NotImplementedError

    def subset_filters(self) -> dict[str, str]:
        """Regex params filters for ``"last_conv"`` and ``"last_block"``."""
        raise NotImplementedError

    def torch_module_name(self, path: str) -> str:
        """Map a linfit module path (``"layer1/block0/conv1"``) to its torchvision name."""
        if path == "head":
            return self.torch_head_name
        return path.replace("/", ".")
