"""SqueezeNet 1.1 (Iandola et al. 2016, arXiv 1602.07360; v1.1 from the authors' Caffe release).

``conv1`` (3x3, stride 2, no padding, 64 channels, bias) + ReLU, 3x3 stride-2 max pool, ``fire2``, ``fire3``,
pool, ``fire4``, ``fire5``, pool, ``fire6`` .. ``fire9``; each fire module is a 1x1 ``squeeze1x1`` conv + ReLU
feeding a 1x1 ``expand1x1`` and a 3x3 (padding 1) ``expand3x3`` conv, each + ReLU, concatenated (1x1
first). Pools use Caffe's (and torchvision's) ceil mode: ``[N, H, W, C] -> [N, ceil((H-3)/2)+1, ...]``.
``features(x) [N, 512]`` is the spatial mean of ``fire9``.

The published classifier is ``conv10`` (1x1, 1000 channels) -> ReLU -> global average pool. linfit's
``head`` is ``conv10`` applied *after* the pooling, without that ReLU, so that ``logits = head(phi)`` is
linear in the features as every backbone's contract requires (LGC's head-averaged kernels and
``replace_head`` rely on it); this is also the forward pass of the ``ndf`` package that ships the weights.
The weights' layer names are the Keras/Caffe ones (``fire2/squeeze1x1``, ``conv10``), see
:meth:`SqueezeNet.keras_layer_name`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from linfit.models.base import Backbone
from linfit.models.layers import check_images, conv, global_avg_pool


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Unpadded max pooling in ceil mode (Caffe, ``nn.MaxPool2d(ceil_mode=True)``): a last partial window
    is kept when it starts inside the input. ``[N, H, W, C] -> [N, ceil((H-window)/stride)+1, ..., C]``."""
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        pads.append((0, max((out - 1) * stride + window - size, 0)))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class Fire(nn.Module):
    """``concat(relu(expand1x1(s)), relu(expand3x3(s)))`` with ``s = relu(squeeze1x1(x))``:
    ``[N, H, W, c] -> [N, H, W, 2 expand]``."""

    squeeze: int
    expand: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = nn.relu(conv(self.squeeze, 1, use_bias=True, name="squeeze1x1")(x))
        e1 = nn.relu(conv(self.expand, 1, use_bias=True, name="expand1x1")(s))
        e3 = nn.relu(conv(self.expand, 3, use_bias=True, name="expand3x3")(s))
        return jnp.concatenate([e1, e3], axis=-1)


# (squeeze, expand) of fire2..fire9; a max pool precedes fire2, fire4 and fire6.
FIRES = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128), 6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)}
POOL_BEFORE = (2, 4, 6)


class SqueezeNet(Backbone):
    """SqueezeNet 1.1. ``features(x) [N, 512]``.

    Attributes:
      num_classes: ``C``.
    """

    num_classes: int

    def setup(self):
        self.conv1 = conv(64, 3, 2, use_bias=True, padding="valid")
        for k, (squeeze, expand) in FIRES.items():
            setattr(self, f"fire{k}", Fire(squeeze, expand))
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [N, H, W, 3] -> phi [N, 512]`` (post-ReLU, globally average-pooled). ``train`` is unused (no
        BatchNorm; the published dropout before ``conv10`` is not part of the features)."""
        check_images(x)
        x = nn.relu(self.conv1(x))
        for k in FIRES:
            if k in POOL_BEFORE:
                x = max_pool_ceil(x)
            x = getattr(self, f"fire{k}")(x)
        return global_avg_pool(x)

    def subset_filters(self) -> dict[str, str]:
        return {"last_conv": "^fire9/expand(1x1|3x3)/kernel$", "last_block": "^(fire9|head)/"}

    def keras_layer_name(self, path: str) -> str:
        """The Keras/Caffe layer name of a linfit module path: ``"fire2/squeeze1x1"`` unchanged, ``"head"``
        -> ``"conv10"``."""
        return "conv10" if path == "head" else path
