"""Backbones by name: ``create("resnet50", num_classes=1000)``.

=====================  ==========================================================================
name                   module
=====================  ==========================================================================
``small_cnn``          :class:`SmallCNN` (``width=16, depth=3, batch_norm=False``)
``cifar_resnet8/20``   :class:`ResNet`, BasicBlock, stages ``(n, n, n)`` with n = 1 / 3, CIFAR stem,
                       ``width=16``
``resnet18/34``        :class:`ResNet`, BasicBlock, ``(2,2,2,2)`` / ``(3,4,6,3)``, ImageNet stem
``resnet50/101/152``   :class:`ResNet`, Bottleneck, ``(3,4,6,3)`` / ``(3,4,23,3)`` / ``(3,8,36,3)``
``densenet121/169``    :class:`DenseNet`, ``(6,12,24,16)`` / ``(6,12,32,32)``, growth 32, init 64
``small_densenet``     :class:`DenseNet`, ``(2,2,2)``, growth 12, init 24, CIFAR stem
``efficientnet_lite0``  :class:`EfficientNetLite`, ``width, depth = 1.0, 1.0`` (224 px)
``efficientnet_lite1``  :class:`EfficientNetLite`, ``1.0, 1.1`` (240 px)
``efficientnet_lite2``  :class:`EfficientNetLite`, ``1.1, 1.2`` (260 px)
``mobilenet_v2``       :class:`MobileNetV2`, width 1.0 (224 px)
``squeezenet1_1``      :class:`SqueezeNet` 1.1 (227 px, Caffe's crop)
=====================  ==========================================================================

The ImageNet-trained architectures also declare how their weights expect images
(:func:`preprocessing`): input size, channel order, mean and std.

Keyword arguments override the module's attributes, e.g. ``create("resnet18", 10, width=16,
stem="cifar")``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import MappingProxyType

import flax.linen as nn

from linfit.errors import ShapeError, UnknownNameError
from linfit.models.densenet import DenseNet
from linfit.models.mobilenets import EfficientNetLite, MobileNetV2
from linfit.models.resnet import ResNet
from linfit.models.small_cnn import SmallCNN
from linfit.models.squeezenet import SqueezeNet
from linfit.zoo.preprocessing import Preprocessing

_p = functools.partial
_MODELS: MappingProxyType[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "small_cnn": SmallCNN,
        "cifar_resnet8": _p(ResNet, block="basic", stage_sizes=(1, 1, 1), width=16, stem="cifar"),
        "cifar_resnet20": _p(ResNet, block="basic", stage_sizes=(3, 3, 3), width=16, stem="cifar"),
        "resnet18": _p(ResNet, block="basic", stage_sizes=(2, 2, 2, 2)),
        "resnet34": _p(ResNet, block="basic", stage_sizes=(3, 4, 6, 3)),
        "resnet50": _p(ResNet, block="bottleneck", stage_sizes=(3, 4, 6, 3)),
        "resnet101": _p(ResNet, block="bottleneck", stage_sizes=(3, 4, 23, 3)),
        "resnet152": _p(ResNet, block="bottleneck", stage_sizes=(3, 8, 36, 3)),
        "densenet121": _p(DenseNet, block_config=(6, 12, 24, 16)),
        "densenet169": _p(DenseNet, block_config=(6, 12, 32, 32)),
        "small_densenet": _p(DenseNet, growth_rate=12, block_config=(2, 2, 2), num_init_features=24, stem="cifar"),
        "efficientnet_lite0": _p(EfficientNetLite, width=1.0, depth=1.0),
        "efficientnet_lite1": _p(EfficientNetLite, width=1.0, depth=1.1),
        "efficientnet_lite2": _p(EfficientNetLite, width=1.1, depth=1.2),
        "mobilenet_v2": MobileNetV2,
        "squeezenet1_1": SqueezeNet,
    }
)


# mean / std in pixel / 255 units (pixels in [0, 1]), in the model's channel order
_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision
_TF_LITE = ((127 / 255,) * 3, (128 / 255,) * 3)  # TensorFlow efficientnet/lite: (x - 127) / 128 in 0..255
_CAFFE_BGR = ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3)  # Caffe: BGR, ImageNet mean subtracted
_PREPROCESSING = MappingProxyType(
    {
        **{f"efficientnet_lite{k}": Preprocessing(size, *_TF_LITE, "RGB") for k, size in enumerate((224, 240, 260))},
        "mobilenet_v2": Preprocessing(224, *_IMAGENET_MEAN_STD, "RGB"),
        "squeezenet1_1": Preprocessing(227, *_CAFFE_BGR, "BGR"),
    }
)


def preprocessing(name: str) -> Preprocessing:
    """The input convention of the registered model ``name``'s ImageNet weights
    (:class:`linfit.zoo.preprocessing.Preprocessing`, mean and std in pixel / 255 units).

    Raises:
      UnknownNameError: ``name`` declares none (the message lists those that do).
    """
    if name not in _PREPROCESSING:
        raise UnknownNameError(f"model {name!r} declares no preprocessing; models that do: {', '.join(sorted(_PREPROCESSING))}")
    return _PREPROCESSING[name]


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the backbone ``name`` with a ``num_classes``-way head; ``kwargs`` override its attributes.

    Raises:
      UnknownNameError: ``name`` is not registered (the message lists the known names).
      ShapeError: ``num_classes`` is not a positive integer.
    """
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(names())}")
    check_num_classes(num_classes)
    return _MODELS[name](num_classes=num_classes, **kwargs)


def check_num_classes(num_classes: int) -> None:
    """Raise ``ShapeError`` unless ``num_classes`` is an integer >= 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ShapeError(f"num_classes must be an integer >= 1; got {num_classes!r}")
