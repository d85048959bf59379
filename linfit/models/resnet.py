"""ResNets (He et al. 2016, arXiv 1512.03385) in torchvision's layout, plus the CIFAR-style variants.

ImageNet models follow torchvision v1.5 (stride in the 3x3 conv of the Bottleneck; projection shortcut,
1x1 conv + BN, whenever the shape changes). Module paths map one-to-one to torchvision names:

=================================  ===============================
linfit path                        torchvision name
=================================  ===============================
``conv1``, ``bn1``                 ``conv1``, ``bn1``
``layer2/block0/conv1``            ``layer2.0.conv1``
``layer2/block0/downsample_conv``  ``layer2.0.downsample.0``
``layer2/block0/downsample_bn``    ``layer2.0.downsample.1``
``head``                           ``fc``
=================================  ===============================

CIFAR ResNets (``cifar_resnet8``/``20``) use a 3x3 stride-1 stem without max pooling, three stages of
``width, 2 width, 4 width`` channels (``width=16`` as in the paper) and projection shortcuts (the
paper's option B) rather than zero padding, so every variant shares this one module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from linfit.errors import UnknownNameError
from linfit.models.base import Backbone
from linfit.models.layers import batch_norm, check_images, conv, global_avg_pool, max_pool_3x3

STEMS = ("imagenet", "cifar")


class BasicBlock(nn.Module):
    """Two 3x3 convs: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``[N,H,W,*] -> [N,H/s,W/s,planes]``."""

    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(
            batch_norm("bn1")(conv(self.planes, 3, self.stride, name="conv1")(x), use_running_average=not train)
        )
        y = batch_norm("bn2")(conv(self.planes, 3, name="conv2")(y), use_running_average=not train)
        return nn.relu(y + _shortcut(x, self.planes * self.expansion, self.stride, train))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (``4 planes``) convs with a shortcut: ``[N,H,W,*] -> [N,H/s,W/s,4 planes]``."""

    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(batch_norm("bn1")(conv(self.planes, 1, name="conv1")(x), use_running_average=not train))
        y = nn.relu(
            batch_norm("bn2")(conv(self.planes, 3, self.stride, name="conv2")(y), use_running_average=not train)
        )
        y = batch_norm("bn3")(conv(self.planes * self.expansion, 1, name="conv3")(y), use_running_average=not train)
        return nn.relu(y + _shortcut(x, self.planes * self.expansion, self.stride, train))


def _shortcut(x: jax.Array, out_channels: int, stride: int, train: bool) -> jax.Array:
    """Identity, or a 1x1 projection + BN when the stride or channel count changes (inside a compact block)."""
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    x = conv(out_channels, 1, stride, name="downsample_conv")(x)
    return batch_norm("downsample_bn")(x, use_running_average=not train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetStage(nn.Module):
    """``num_blocks`` residual blocks named ``block0, block1, ...``; the first one carries the stride."""

    block: str
    planes: int
    num_blocks: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        block_cls = BLOCKS[self.block]
        for i in range(self.num_blocks):
            x = block_cls(self.planes, self.stride if i == 0 else 1, name=f"block{i}")(x, train)
        return x


class ResNet(Backbone):
    """A ResNet: stem, ``len(stage_sizes)`` stages ``layer1..layerK`` of ``width * 2**(k-1)`` planes, global
    average pooling, ``head``. ``features(x) [N, width * 2**(K-1) * expansion]``.

    Attributes:
      num_classes: ``C``.
      block: ``"basic"`` or ``"bottleneck"``.
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      width: planes of the stem and of the first stage (64 for ImageNet, 16 for CIFAR).
      stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max pool) or ``"cifar"`` (3x3 stride-1 conv).
    """

    num_classes: int
    block: str = "basic"
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    stem: str = "imagenet"

    def setup(self):
        if self.block not in BLOCKS:
            raise UnknownNameError(f"unknown ResNet block {self.block!r}; known: {sorted(BLOCKS)}")
        if self.stem not in STEMS:
            raise UnknownNameError(f"unknown stem {self.stem!r}; known: {list(STEMS)}")
        imagenet = self.stem == "imagenet"
        self.conv1 = conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1)
        self.bn1 = batch_norm()
        for k, num_blocks in enumerate(self.stage_sizes):
            stage = ResNetStage(self.block, self.width * 2**k, num_blocks, 1 if k == 0 else 2)
            setattr(self, f"layer{k + 1}", stage)
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [N, H, W, C_in] -> phi [N, D]`` (post-ReLU, globally average-pooled)."""
        check_images(x)
        x = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if self.stem == "imagenet":
            x = max_pool_3x3(x)
        for k in range(len(self.stage_sizes)):
            x = getattr(self, f"layer{k + 1}")(x, train)
        return global_avg_pool(x)

    def subset_filters(self) -> dict[str, str]:
        last_block = f"layer{len(self.stage_sizes)}/block{self.stage_sizes[-1] - 1}"
        last_conv = "conv3" if self.block == "bottleneck" else "conv2"
        return {"last_conv": f"^{last_block}/{last_conv}/kernel$", "last_block": f"^({last_block}|head)/"}

    def torch_module_name(self, path: str) -> str:
        path = re.sub(r"/block(\d+)/", r"/\1/", path)
        path = path.replace("downsample_conv", "downsample/0").replace("downsample_bn", "downsample/1")
        return super().torch_module_name(path)
