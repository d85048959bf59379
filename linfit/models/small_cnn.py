"""A small CNN for CPU work: ``depth`` 3x3 conv stages, max pooling between them, global average pooling."""

from __future__ import annotations

import flax.linen as nn
import jax

from linfit.models.base import Backbone
from linfit.models.layers import batch_norm, check_images, conv, global_avg_pool


class SmallCNN(Backbone):
    """``conv{i} -> [bn{i}] -> ReLU -> 2x2 max pool`` for ``i = 1..depth`` (no pool after the last), then
    global average pooling (``D = width * 2**(depth-1)``) and ``head``.

    Attributes:
      num_classes: ``C``.
      width: channels of the first conv; stage ``i`` has ``width * 2**(i-1)``.
      depth: number of conv layers.
      batch_norm: BatchNorm after each conv (convs then have no bias).
    """

    num_classes: int
    width: int = 16
    depth: int = 3
    batch_norm: bool = False

    def setup(self):
        for i in range(1, self.depth + 1):
            setattr(self, f"conv{i}", conv(self.width * 2 ** (i - 1), 3, use_bias=not self.batch_norm))
            if self.batch_norm:
                setattr(self, f"bn{i}", batch_norm())
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [N, H, W, C_in] -> phi [N, width * 2**(depth-1)]``."""
        check_images(x)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x, use_running_average=not train)
            x = nn.relu(x)
            if i < self.depth:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return global_avg_pool(x)

    def subset_filters(self) -> dict[str, str]:
        last = self.depth
        return {"last_conv": f"^conv{last}/kernel$", "last_block": f"^(conv{last}|bn{last}|head)/"}
