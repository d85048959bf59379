"""Flax backbones split into ``features(x) -> phi [N, D]`` and ``head(phi) -> logits [N, C]``.

Inputs are NHWC float32 images. ``create(name, num_classes, **kwargs)`` builds a registered model;
``init``, ``logits_fn``, ``features_fn``, ``replace_head`` and ``param_subsets`` turn it into the pure
functions and parameter subsets the rest of linfit works with. Weights load with
:mod:`linfit.checkpoints`.
"""

from linfit.models.base import Backbone
from linfit.models.densenet import DenseNet
from linfit.models.functional import features_fn, init, logits_fn, param_subsets, replace_head
from linfit.models.mobilenets import EfficientNetLite, MobileNetV2
from linfit.models.registry import Preprocessing, create, names, preprocessing
from linfit.models.resnet import ResNet
from linfit.models.small_cnn import SmallCNN
from linfit.models.squeezenet import SqueezeNet

__all__ = [
    "Backbone",
    "DenseNet",
    "EfficientNetLite",
    "MobileNetV2",
    "Preprocessing",
    "ResNet",
    "SmallCNN",
    "SqueezeNet",
    "create",
    "features_fn",
    "init",
    "logits_fn",
    "names",
    "param_subsets",
    "preprocessing",
    "replace_head",
]
