"""Tests for linfit.checkpoints: torchvision-named weights against an independent numpy forward pass,
strict key checking, linfit's own format and big_vision-style npz."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from linfit import checkpoints, models
from linfit.errors import CheckpointError
from linfit.tree import leaf_paths

EPS = 1e-5


# ----------------------------------------------------------------------------- numpy reference (NCHW)


def conv2d(x, w, stride=1):
    """PyTorch Conv2d(bias=False, padding=k//2): x [N, C, H, W], w [O, C, kh, kw] -> [N, O, Ho, Wo]."""
    kh, kw = w.shape[2:]
    pad = kh // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (x.shape[2] + 2 * pad - kh) // stride + 1
    wo = (x.shape[3] + 2 * pad - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, :, u : u + stride * (ho - 1) + 1 : stride, v : v + stride * (wo - 1) + 1 : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, u, v])
    return out


def bn(x, sd, name):
    shape = (1, -1, 1, 1)
    mean, var = sd[f"{name}.running_mean"].reshape(shape), sd[f"{name}.running_var"].reshape(shape)
    return (x - mean) / np.sqrt(var + EPS) * sd[f"{name}.weight"].reshape(shape) + sd[f"{name}.bias"].reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


def maxpool3x3s2(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho, wo = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
    views = [xp[:, :, u : u + 2 * (ho - 1) + 1 : 2, v : v + 2 * (wo - 1) + 1 : 2] for u in range(3) for v in range(3)]
    return np.max(np.stack(views), axis=0)


def avgpool2x2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def torch_resnet_forward(sd, x, block, stage_sizes, imagenet_stem):
    x = relu(bn(conv2d(x, sd["conv1.weight"], 2 if imagenet_stem else 1), sd, "bn1"))
    if imagenet_stem:
        x = maxpool3x3s2(x)
    for s, n in enumerate(stage_sizes, start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            if block == "basic":
                y = relu(bn(conv2d(x, sd[f"{p}.conv1.weight"], stride), sd, f"{p}.bn1"))
                y = bn(conv2d(y, sd[f"{p}.conv2.weight"]), sd, f"{p}.bn2")
            else:
                y = relu(bn(conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = relu(bn(conv2d(y, sd[f"{p}.conv2.weight"], stride), sd, f"{p}.bn2"))
                y = bn(conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(conv2d(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
            x = relu(y + x)
    return linear(x.mean(axis=(2, 3)), sd, "fc")


def torch_densenet_forward(sd, x, block_config):
    x = maxpool3x3s2(relu(bn(conv2d(x, sd["features.conv0.weight"], 2), sd, "features.norm0")))
    for b, n in enumerate(block_config, start=1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            y = conv2d(relu(bn(x, sd, f"{p}.norm1")), sd[f"{p}.conv1.weight"])
            y = conv2d(relu(bn(y, sd, f"{p}.norm2")), sd[f"{p}.conv2.weight"])
            x = np.concatenate([x, y], axis=1)
        if b < len(block_config):
            p = f"features.transition{b}"
            x = avgpool2x2(conv2d(relu(bn(x, sd, f"{p}.norm")), sd[f"{p}.conv.weight"]))
    x = relu(bn(x, sd, "features.norm5"))
    return linear(x.mean(axis=(2, 3)), sd, "classifier")


# ----------------------------------------------------------------------------- torch-named random weights


class StateDict:
    """Builds a random torchvision-style state dict (float32, torch layouts)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.sd = {}

    def conv(self, name, out_c, in_c, k):
        self.sd[f"{name}.weight"] = self.rng.normal(0, np.sqrt(2.0 / (in_c * k * k)), (out_c, in_c, k, k)).astype(
            np.float32
        )

    def bn(self, name, c):
        self.sd[f"{name}.weight"] = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[f"{name}.bias"] = self.rng.normal(0, 0.1, c).astype(np.float32)
        self.sd[f"{name}.running_mean"] = self.rng.normal(0, 0.1, c).astype(np.float32)
        self.sd[f"{name}.running_var"] = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[f"{name}.num_batches_tracked"] = np.array(7, dtype=np.int64)

    def linear(self, name, out_f, in_f):
        self.sd[f"{name}.weight"] = self.rng.normal(0, 1 / np.sqrt(in_f), (out_f, in_f)).astype(np.float32)
        self.sd[f"{name}.bias"] = self.rng.normal(0, 0.1, out_f).astype(np.float32)


def torch_resnet_state(block, stage_sizes, width, num_classes, imagenet_stem, seed=0):
    st = StateDict(seed)
    st.conv("conv1", width, 3, 7 if imagenet_stem else 3)
    st.bn("bn1", width)
    expansion = 4 if block == "bottleneck" else 1
    in_c = width
    for s, n in enumerate(stage_sizes, start=1):
        planes = width * 2 ** (s - 1)
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            if block == "basic":
                st.conv(f"{p}.conv1", planes, in_c, 3)
                st.bn(f"{p}.bn1", planes)
                st.conv(f"{p}.conv2", planes, planes, 3)
                st.bn(f"{p}.bn2", planes)
            else:
                st.conv(f"{p}.conv1", planes, in_c, 1)
                st.bn(f"{p}.bn1", planes)
                st.conv(f"{p}.conv2", planes, planes, 3)
                st.bn(f"{p}.bn2", planes)
                st.conv(f"{p}.conv3", planes * 4, planes, 1)
                st.bn(f"{p}.bn3", planes * 4)
            if stride != 1 or in_c != planes * expansion:
                st.conv(f"{p}.downsample.0", planes * expansion, in_c, 1)
                st.bn(f"{p}.downsample.1", planes * expansion)
            in_c = planes * expansion
    st.linear("fc", num_classes, in_c)
    return st.sd


def torch_densenet_state(growth, block_config, init_features, bn_size, num_classes, seed=0):
    st = StateDict(seed)
    st.conv("features.conv0", init_features, 3, 7)
    st.bn("features.norm0", init_features)
    c = init_features
    for b, n in enumerate(block_config, start=1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            st.bn(f"{p}.norm1", c)
            st.conv(f"{p}.conv1", bn_size * growth, c, 1)
            st.bn(f"{p}.norm2", bn_size * growth)
            st.conv(f"{p}.conv2", growth, bn_size * growth, 3)
            c += growth
        if b < len(block_config):
            st.bn(f"features.transition{b}.norm", c)
            st.conv(f"features.transition{b}.conv", c // 2, c, 1)
            c //= 2
    st.bn("features.norm5", c)
    st.linear("classifier", num_classes, c)
    return st.sd


def _template(model, x):
    return jax.eval_shape(lambda k: models.init(model, k, x), jax.random.PRNGKey(0))


X_NCHW = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
X_NHWC = jnp.asarray(X_NCHW.transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- torchvision mapping


RESNET_CASES = [
    # (model, block, stage sizes, width, imagenet stem)
    (models.ResNet(num_classes=5, block="basic", stage_sizes=(1, 1, 1, 1), width=4), "basic", (1, 1, 1, 1), 4, True),
    (models.ResNet(num_classes=5, block="bottleneck", stage_sizes=(2, 1), width=2), "bottleneck", (2, 1), 2, True),
    (models.create("cifar_resnet8", 5, width=4), "basic", (1, 1, 1), 4, False),
]


@pytest.mark.parametrize("model, block, stage_sizes, width, imagenet_stem", RESNET_CASES)
def test_load_torchvision_resnet_matches_numpy_forward(tmp_path, model, block, stage_sizes, width, imagenet_stem):
    sd = torch_resnet_state(block, stage_sizes, width, 5, imagenet_stem)
    path = tmp_path / "resnet.safetensors"
    save_file(sd, str(path))
    variables = checkpoints.load_torchvision(path, model, _template(model, X_NHWC))
    expected = torch_resnet_forward(
        {k: v.astype(np.float64) for k, v in sd.items()}, X_NCHW.astype(np.float64), block, stage_sizes, imagenet_stem
    )
    got = jax.jit(model.apply)(variables, X_NHWC)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_load_torchvision_densenet_matches_numpy_forward(tmp_path):
    model = models.DenseNet(num_classes=4, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2)
    sd = torch_densenet_state(4, (2, 2), 8, 2, 4)
    path = tmp_path / "densenet.npz"  # the .npz route with torch names
    np.savez(path, **sd)
    variables = checkpoints.load_torchvision(path, model, _template(model, X_NHWC))
    expected = torch_densenet_forward(
        {k: v.astype(np.float64) for k, v in sd.items()}, X_NCHW.astype(np.float64), (2, 2)
    )
    got = jax.jit(model.apply)(variables, X_NHWC)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_load_torchvision_lists_missing_unexpected_and_misshaped(tmp_path):
    model = models.ResNet(num_classes=5, block="basic", stage_sizes=(1, 1), width=4)
    sd = torch_resnet_state("basic", (1, 1), 4, 5, True)
    del sd["layer2.0.bn2.running_var"]
    sd["layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
    sd["fc.weight"] = np.zeros((6, 8), np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        checkpoints.load_torchvision(path, model, _template(model, X_NHWC))
    message = str(err.value)
    assert "missing" in message and "layer2.0.bn2.running_var" in message
    assert "unexpected" in message and "layer9.0.conv1.weight" in message
    assert "mis-shaped" in message and "fc.weight" in message
    assert "num_batches_tracked" not in message


def test_load_torchvision_rejects_unknown_suffix_and_missing_file(tmp_path):
    model = models.create("small_cnn", 2, width=2)
    template = _template(model, X_NHWC)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoints.load_torchvision(tmp_path / "nope.safetensors", model, template)
    (tmp_path / "w.pth").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="suffix"):
        checkpoints.load_torchvision(tmp_path / "w.pth", model, template)


def test_torch_key_names():
    resnet = models.create("resnet50", 10)
    assert checkpoints.torch_key(resnet, "params/layer3/block5/downsample_bn/scale") == "layer3.5.downsample.1.weight"
    assert checkpoints.torch_key(resnet, "batch_stats/bn1/var") == "bn1.running_var"
    assert checkpoints.torch_key(resnet, "params/head/kernel") == "fc.weight"
    dense = models.create("densenet121", 10)
    assert (
        checkpoints.torch_key(dense, "params/denseblock2/denselayer3/conv1/kernel")
        == "features.denseblock2.denselayer3.conv1.weight"
    )
    assert checkpoints.torch_key(dense, "params/head/bias") == "classifier.bias"


# ----------------------------------------------------------------------------- linfit format, big_vision npz


def _random_variables(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "conv1": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
            "head": {
                "kernel": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": rng.normal(size=3).astype(np.float32),
            },
        },
        "batch_stats": {
            "bn1": {"mean": rng.normal(size=4).astype(np.float32), "var": rng.uniform(0.5, 1, 4).astype(np.float32)}
        },
    }


def _flat(tree):
    return dict(zip(leaf_paths(tree), (np.asarray(l) for l in jax.tree_util.tree_leaves(tree))))


def test_save_load_round_trip_float32(tmp_path):
    variables = _random_variables()
    path = tmp_path / "ckpt.msgpack"
    checkpoints.save(path, variables, metadata={"arch": "toy", "epoch": 3})
    loaded = checkpoints.load(path, target=variables)
    assert _flat(loaded).keys() == _flat(variables).keys()
    for key, value in _flat(variables).items():
        assert _flat(loaded)[key].dtype == np.float32
        np.testing.assert_array_equal(_flat(loaded)[key], value)
    assert checkpoints.load_metadata(path) == {"arch": "toy", "epoch": 3}


def test_save_load_round_trip_float16(tmp_path):
    variables = _random_variables()
    full, half = tmp_path / "full.msgpack", tmp_path / "half.msgpack"
    checkpoints.save(full, variables)
    checkpoints.save(half, variables, dtype="float16")
    assert half.stat().st_size < 0.75 * full.stat().st_size
    loaded = _flat(checkpoints.load(half))
    for key, value in _flat(variables).items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], value.astype(np.float16).astype(np.float32))


def test_save_refuses_values_the_storage_dtype_would_turn_into_inf(tmp_path):
    variables = _random_variables()
    variables["params"]["conv1"]["kernel"] = np.full((2, 2), 7.0e4, np.float32)  # float16 max: 65504
    path = tmp_path / "half.msgpack"
    with pytest.raises(CheckpointError, match=r"conv1.*kernel.*beyond the range of float16.*7e\+04.*65504"):
        checkpoints.save(path, variables, dtype="float16")
    assert not path.exists()
    checkpoints.save(path, variables, dtype="float32")
    assert _flat(checkpoints.load(path))["params/conv1/kernel"].max() == 7.0e4


def test_load_with_mismatched_target(tmp_path):
    variables = _random_variables()
    path = tmp_path / "ckpt.msgpack"
    checkpoints.save(path, variables)
    target = _random_variables()
    target["params"]["head"]["kernel"] = np.zeros((4, 5), np.float32)
    del target["batch_stats"]["bn1"]["var"]
    target["params"]["conv2"] = {"kernel": np.zeros((1, 1, 4, 4), np.float32)}
    with pytest.raises(CheckpointError) as err:
        checkpoints.load(path, target=target)
    message = str(err.value)
    assert "params/conv2/kernel" in message and "batch_stats/bn1/var" in message and "params/head/kernel" in message


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "junk.msgpack"
    path.write_bytes(b"not msgpack at all")
    with pytest.raises(CheckpointError):
        checkpoints.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoints.load(tmp_path / "absent.msgpack")


def test_big_vision_npz_round_trip_and_strictness(tmp_path):
    variables = _random_variables()
    flat = _flat(variables)
    path = tmp_path / "bv.npz"
    np.savez(path, **flat)
    loaded = _flat(checkpoints.load_big_vision_npz(path, variables))
    for key, value in flat.items():
        np.testing.assert_array_equal(loaded[key], value)
    del flat["batch_stats/bn1/mean"]
    flat["params/extra/kernel"] = np.zeros(2, np.float32)
    np.savez(path, **flat)
    with pytest.raises(CheckpointError, match="batch_stats/bn1/mean") as err:
        checkpoints.load_big_vision_npz(path, variables)
    assert "params/extra/kernel" in str(err.value)


# ----------------------------------------------------------------------------- integrity: non-finite, garbled


def test_check_weights_names_each_bad_tensor_with_its_counts():
    nested = {
        "params": {
            "conv": {"kernel": np.array([[1.0, np.nan], [np.inf, -np.inf]], np.float16)},
            "bias": jnp.array([np.nan, 1.0, np.nan], jnp.bfloat16),
            "ok": np.ones(3, np.float32),
        },
        "batch_stats": {"count": np.array([2**31 - 1], np.int32)},
    }
    with pytest.raises(CheckpointError) as err:
        checkpoints.check_weights(nested, "some/file.msgpack")
    message = str(err.value)
    assert message.startswith("some/file.msgpack:")
    assert "params/conv/kernel (1 NaN, 2 inf, 0 above 1e+10 of 4; largest finite 1)" in message
    assert "params/bias (2 NaN, 0 inf, 0 above 1e+10 of 3; largest finite 1)" in message
    assert "params/ok" not in message and "batch_stats" not in message
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight \(0 NaN, 1 inf, 0 above 1e\+10 of 2"):
        checkpoints.check_weights({"layer1.0.conv1.weight": np.array([1.0, 1e309])}, "w.safetensors")
    # finite but impossibly large: what garbled bytes decode to
    with pytest.raises(CheckpointError, match=r"w \(0 NaN, 0 inf, 1 above 1e\+10 of 3; largest finite 4\.5e\+24\)"):
        checkpoints.check_weights({"w": np.array([0.5, -4.5e24, 1e10], np.float32)}, "w.msgpack")
    checkpoints.check_weights({"a": np.zeros(3), "b": np.arange(3), "c": np.array([-1e10, 3e4])}, "fine")


def test_garbled_float32_bytes_are_caught_by_their_magnitude():
    """64 random bytes (16 float32 values) written over a weight tensor: the check rejects them for 200 of 200
    seeds (each value exceeds 1e10 or is NaN/inf with probability ~0.37, so 16 all pass with ~6e-4)."""
    caught = 0
    for seed in range(200):
        weights = np.random.default_rng(seed).normal(0, 0.1, 256).astype(np.float32)
        start = np.random.default_rng(seed).integers(0, 240)
        weights[start : start + 16] = np.frombuffer(np.random.default_rng(seed + 1000).bytes(64), np.float32)
        try:
            checkpoints.check_weights({"kernel": weights}, "w.msgpack")
        except CheckpointError:
            caught += 1
    assert caught == 200


def _poison(flat: dict, key: str, value: float) -> dict:
    out = dict(flat)
    out[key] = out[key].copy()
    out[key].reshape(-1)[out[key].size // 2] = value
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("fmt", ["msgpack", "npz", "safetensors"])
def test_non_finite_tensor_is_rejected_naming_file_and_tensor(tmp_path, fmt, value):
    if fmt == "safetensors":  # torchvision names through load_torchvision
        model = models.ResNet(num_classes=5, block="basic", stage_sizes=(1, 1), width=4)
        key = "layer2.0.conv1.weight"
        path = tmp_path / "w.safetensors"
        save_file(_poison(torch_resnet_state("basic", (1, 1), 4, 5, True), key, value), str(path))

        def load():
            return checkpoints.load_torchvision(path, model, _template(model, X_NHWC))
    else:
        variables = _random_variables()
        key = "params/conv1/kernel"
        path = tmp_path / f"w.{fmt}"
        bad = _poison(_flat(variables), key, value)
        if fmt == "npz":
            np.savez(path, **bad)

            def load():
                return checkpoints.load_big_vision_npz(path, variables)
        else:
            variables["params"]["conv1"]["kernel"] = bad[key]
            checkpoints.save(path, variables, dtype="float16")

            def load():
                return checkpoints.load(path, target=variables)
    counts = "1 NaN, 0 inf" if np.isnan(value) else "0 NaN, 1 inf"
    with pytest.raises(CheckpointError) as err:
        load()
    assert str(path) in str(err.value) and f"{key} ({counts}" in str(err.value)


def test_truncated_or_garbled_files_raise_checkpoint_error_naming_the_file(tmp_path):
    variables = _random_variables()
    flat = _flat(variables)
    msgpack, npz, st = tmp_path / "w.msgpack", tmp_path / "w.npz", tmp_path / "w.safetensors"
    checkpoints.save(msgpack, variables)
    np.savez(npz, **flat)
    save_file(flat, str(st))
    loaders = {
        msgpack: lambda: checkpoints.load(msgpack),
        npz: lambda: checkpoints.load_big_vision_npz(npz, variables),
        st: lambda: checkpoints.load_big_vision_npz(st, variables),
    }
    for path, load in loaders.items():
        data = path.read_bytes()
        for broken in (data[: len(data) // 2], data[: len(data) - 7], b"garbage" * 50):
            path.write_bytes(broken)
            with pytest.raises(CheckpointError, match=re.escape(str(path))):
                load()


def test_an_interrupted_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """``linfit._io.write_atomic``, under every save of linfit (checkpoints, zoo manifests, progress records):
    a failure before the rename leaves the previous file whole and removes its uniquely named temporary."""
    import os

    from linfit import _io

    path = tmp_path / "w.msgpack"
    checkpoints.save(path, {"params": {"w": np.ones(3, np.float32)}})
    before = path.read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(path, {"params": {"w": np.zeros(5, np.float32)}})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.msgpack"]


def test_an_atomic_save_gets_the_permissions_of_a_plain_write(tmp_path):
    """The file ``write_atomic`` leaves has the mode ``open`` gives a new file under the same umask (a temporary
    file from ``tempfile.mkstemp`` would be ``0o600``: unreadable to the group on a shared results folder)."""
    import os
    import stat

    from linfit import _io

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").write_bytes(b"x")
        _io.write_atomic(tmp_path / "atomic", b"x")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)
    assert mode("atomic") == mode("plain") == 0o644
