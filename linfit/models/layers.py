"""Building blocks shared by linfit's backbones, matched to torchvision's conventions.

* Convolutions have no bias (every one is followed by BatchNorm), symmetric explicit padding
  ``kernel // 2`` as in PyTorch (Flax's ``"SAME"`` pads asymmetrically at stride 2, which would change
  the numbers when torchvision weights are loaded), and Kaiming-normal (He) initialisation in
  ``fan_out`` mode, torchvision's ResNet/DenseNet choice.
* BatchNorm uses eps 1e-5 (TensorFlow-trained models such as EfficientNet-Lite pass 1e-3) and Flax
  momentum 0.9 (= PyTorch momentum 0.1); the caller picks ``use_running_average=not train`` at call time.
* ``padding="same"`` gives TensorFlow's SAME padding (``lax``'s ``"SAME"``: total ``max((ceil(H/s) - 1) s + k
  - H, 0)``, the odd pixel at the bottom/right), which models trained in TensorFlow need.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from linfit.errors import ShapeError, UnknownNameError

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


PADDINGS = ("torch", "same", "valid")


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    use_bias: bool = False,
    groups: int = 1,
    padding: str = "torch",
    name: str | None = None,
) -> nn.Conv:
    """A ``kernel x kernel`` NHWC convolution.

    Args:
      groups: ``feature_group_count`` (``groups == features == input channels`` is a depthwise conv).
      padding: ``"torch"`` (symmetric ``kernel // 2``), ``"same"`` (TensorFlow SAME) or ``"valid"`` (none).
    """
    if padding not in PADDINGS:
        raise UnknownNameError(f"unknown padding {padding!r}; known: {list(PADDINGS)}")
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding={"torch": ((pad, pad), (pad, pad)), "same": "SAME", "valid": "VALID"}[padding],
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=conv_init,
        name=name,
    )


def batch_norm(name: str | None = None, epsilon: float = 1e-5) -> nn.BatchNorm:
    """BatchNorm over the channel axis with torchvision's momentum (0.1 = Flax 0.9), eps 1e-5 by default."""
    return nn.BatchNorm(momentum=0.9, epsilon=epsilon, name=name)


def max_pool_3x3(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(3, stride=2, padding=1)``: ``[N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]``."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: ``[N, H, W, C] -> [N, C]``."""
    return jnp.mean(x, axis=(1, 2))


def check_images(x: jax.Array) -> None:
    """Raise ``ShapeError`` unless ``x`` is a batch of NHWC images ``[N, H, W, C]``."""
    if getattr(x, "ndim", None) != 4:
        raise ShapeError(f"expected NHWC images [N, H, W, C]; got shape {getattr(x, 'shape', None)}")
