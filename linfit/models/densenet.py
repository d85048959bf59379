"""DenseNets (Huang et al. 2017, arXiv 1608.06993) in torchvision's layout (DenseNet-BC, compression 0.5).

Module paths map to torchvision names by prefixing ``features.``: ``conv0``, ``norm0``,
``denseblock1/denselayer1/{norm1,conv1,norm2,conv2}``, ``transition1/{norm,conv}``, ``norm5``; ``head`` is
``classifier``. As in torchvision the final BatchNorm is called ``norm5`` whatever the number of blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from linfit.errors import UnknownNameError
from linfit.models.base import Backbone
from linfit.models.layers import batch_norm, check_images, conv, global_avg_pool, max_pool_3x3
from linfit.models.resnet import STEMS


class DenseLayer(nn.Module):
    """``concat(x, conv2(relu(norm2(conv1(relu(norm1(x)))))))``: ``[N,H,W,c] -> [N,H,W,c + growth_rate]``;
    ``conv1`` is 1x1 with ``bn_size * growth_rate`` channels, ``conv2`` 3x3 with ``growth_rate``."""

    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(batch_norm("norm1")(x, use_running_average=not train))
        y = conv(self.bn_size * self.growth_rate, 1, name="conv1")(y)
        y = nn.relu(batch_norm("norm2")(y, use_running_average=not train))
        y = conv(self.growth_rate, 3, name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers named ``denselayer1, denselayer2, ...``."""

    num_layers: int
    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(1, self.num_layers + 1):
            x = DenseLayer(self.growth_rate, self.bn_size, name=f"denselayer{i}")(x, train)
        return x


class Transition(nn.Module):
    """``avg_pool_2x2(conv(relu(norm(x))))`` with a 1x1 conv to ``out_channels``: ``[N,H,W,c] -> [N,H/2,W/2,out]``."""

    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(batch_norm("norm")(x, use_running_average=not train))
        x = conv(self.out_channels, 1, name="conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(Backbone):
    """A DenseNet-BC: stem, dense blocks separated by transitions (halving channels), ``norm5``, ReLU, global
    average pooling, ``head``. ``features(x) [N, D]`` with ``D`` the channel count after the last block.

    Attributes:
      num_classes: ``C``.
      growth_rate: channels each dense layer adds (32 in torchvision).
      block_config: dense layers per block, ``(6, 12, 24, 16)`` for DenseNet-121.
      num_init_features: channels of the stem conv (64 in torchvision).
      bn_size: bottleneck factor of each layer's 1x1 conv (4).
      stem: ``"imagenet"`` (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool) or ``"cifar"`` (3x3
        stride-1 conv, BN, ReLU).
    """

    num_classes: int
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    stem: str = "imagenet"

    torch_head_name: ClassVar[str] = "classifier"

    def setup(self):
        if self.stem not in STEMS:
            raise UnknownNameError(f"unknown stem {self.stem!r}; known: {list(STEMS)}")
        imagenet = self.stem == "imagenet"
        self.conv0 = conv(self.num_init_features, 7 if imagenet else 3, 2 if imagenet else 1)
        self.norm0 = batch_norm()
        channels = self.num_init_features
        for b, num_layers in enumerate(self.block_config, start=1):
            setattr(self, f"denseblock{b}", DenseBlock(num_layers, self.growth_rate, self.bn_size))
            channels += num_layers * self.growth_rate
            if b < len(self.block_config):
                channels //= 2
                setattr(self, f"transition{b}", Transition(channels))
        self.norm5 = batch_norm()
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [N, H, W, C_in] -> phi [N, D]`` (post-ReLU, globally average-pooled)."""
        check_images(x)
        x = nn.relu(self.norm0(self.conv0(x), use_running_average=not train))
        if self.stem == "imagenet":
            x = max_pool_3x3(x)
        for b in range(1, len(self.block_config) + 1):
            x = getattr(self, f"denseblock{b}")(x, train)
            if b < len(self.block_config):
                x = getattr(self, f"transition{b}")(x, train)
        x = nn.relu(self.norm5(x, use_running_average=not train))
        return global_avg_pool(x)

    def subset_filters(self) -> dict[str, str]:
        last_block = f"denseblock{len(self.block_config)}"
        last_conv = f"{last_block}/denselayer{self.block_config[-1]}/conv2"
        return {"last_conv": f"^{last_conv}/kernel$", "last_block": f"^({last_block}|norm5|head)/"}

    def torch_module_name(self, path: str) -> str:
        if path == "head":
            return self.torch_head_name
        return "features." + path.replace("/", ".")
