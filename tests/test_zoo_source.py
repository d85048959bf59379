"""Bring your own zoo and data: TOML zoo files (linfit.zoo.source), per-model preprocessing
(linfit.zoo.preprocessing) and data paths of any kind (linfit.data.detect), through `linfit select`.

Every checkpoint and dataset is written by the test: torch-named weights from test_checkpoints' independent
state-dict builder, saved as safetensors and as a legacy ``torch.save`` file by test_torch_pickle's hand-written
pickle writer; preprocessing is compared with Pillow's bilinear resize and numpy arithmetic.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from linfit import checkpoints, models
from linfit.cli import main
from linfit.data import load_data, load_task
from linfit.data.detect import data_kind
from linfit.errors import CheckpointError, ConfigError, DatasetError, LinfitError
from linfit.tree import path_str
from linfit.zoo.preprocessing import Preprocessing
from linfit.zoo.source import EMBEDDED_PREPROCESSING, load_zoo, sniff_format
from tests.test_checkpoints import torch_resnet_state
from tests.test_torch_pickle import ODict, tensor, write_legacy, write_zip

TORCHVISION = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


# --------------------------------------------------------------------------- files written by the test


def _flat(variables) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}


def _write_pth(path, state: dict[str, np.ndarray]) -> None:
    """A legacy-layout ``torch.save`` of a flat state dict, one storage per tensor."""
    storages = {str(i): np.ascontiguousarray(a).reshape(-1) for i, a in enumerate(state.values())}
    tree = ODict({name: tensor(storages, str(i), 0, a.shape,
                               tuple(int(s) for s in np.cumprod((1,) + a.shape[:0:-1])[::-1]) if a.ndim else (),
                               legacy=True)
                  for i, (name, a) in enumerate(state.items())})
    write_legacy(path, tree, storages)


def _cnn_variables(num_classes: int, channels: int, size: int, seed: int):
    """A small CNN and random float32 variables of its shapes (abstract init: nothing compiled)."""
    model = models.create("small_cnn", num_classes, width=4, depth=2)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, channels))))
    rng = np.random.default_rng(seed)
    return model, jax.tree_util.tree_map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    """Four models in four formats and the TOML file listing them (with one sha256)."""
    root = tmp_path_factory.mktemp("zoo")
    (root / "w").mkdir()
    _, cnn = _cnn_variables(3, 1, 12, seed=1)
    checkpoints.save(root / "w" / "cnn.msgpack", cnn)
    _, cnn_rgb = _cnn_variables(4, 3, 10, seed=2)
    np.savez(root / "w" / "cnn.npz", **_flat(cnn_rgb))
    state = torch_resnet_state("basic", (1, 1, 1), 4, 5, False, seed=3)
    save_file(state, str(root / "w" / "resnet.safetensors"))
    _write_pth(root / "w" / "resnet.pth", state)
    digest = hashlib.sha256((root / "w" / "resnet.pth").read_bytes()).hexdigest()
    (root / "zoo.toml").write_text(f"""
[[model]]
name = "cnn/gray"
architecture = "small_cnn"
options = {{ width = 4, depth = 2 }}
format = "msgpack"
path = "w/cnn.msgpack"
input_size = 12
channel_order = "L"
mean = [0.5]
std = [0.25]
source_domain = "mnist"

[[model]]
name = "cnn/rgb"
architecture = "small_cnn"
options = {{ width = 4, depth = 2 }}
format = "npz"
path = "w/cnn.npz"
input_size = 10

[[model]]
name = "resnet/st"
architecture = "cifar_resnet8"
options = {{ width = 4 }}
format = "safetensors"
path = "w/resnet.safetensors"
reference = true
input_size = 16
mean = {TORCHVISION[0]}
std = {TORCHVISION[1]}

[[model]]
name = "resnet/pth"
architecture = "cifar_resnet8"
options = {{ width = 4 }}
format = "pth"
path = "w/resnet.pth"
sha256 = "{digest}"
input_size = 20
channel_order = "BGR"
mean = {TORCHVISION[0][::-1]}
std = {TORCHVISION[1][::-1]}
""", encoding="utf-8")
    return root, {"cnn": cnn, "cnn_rgb": cnn_rgb, "state": state}


def test_zoo_list_lists_a_toml_zoo_as_declared(zoo_dir, capsys):
    """`linfit zoo list --zoo FILE.toml`: one row per [[model]] with the file's own values; the reference starred."""
    root, _ = zoo_dir
    assert main(["zoo", "list", "--zoo", str(root / "zoo.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    rows = {line.split()[0]: line.split() for line in lines if "/" in line.split()[0]}
    assert rows["cnn/gray"][1:] == ["small_cnn", "msgpack", "mnist", "12px", "L", str(root / "w" / "cnn.msgpack")]
    assert rows["cnn/rgb"][1:6] == ["small_cnn", "npz", "-", "10px", "RGB"]
    assert rows["resnet/st"][1:3] == ["*", "cifar_resnet8"] and rows["resnet/pth"][4:6] == ["20px", "BGR"]


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """root/<class>/*.png: 3 classes x 8 RGB images of 24 x 24 whose colour depends on the class."""
    root = tmp_path_factory.mktemp("data") / "blobs"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square", "star")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            img = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
            img[4 + 2 * c:14 + 2 * c, 6:18, c] += 150
            Image.fromarray(img, "RGB").save(root / name / f"{i}.png")
    return root


# --------------------------------------------------------------------------- the zoo file


def test_toml_entries_and_loading_every_format(zoo_dir):
    root, written = zoo_dir
    entries = load_zoo(root / "zoo.toml")
    assert [e.name for e in entries] == ["cnn/gray", "cnn/rgb", "resnet/st", "resnet/pth"]
    assert [e.reference for e in entries] == [False, False, True, False]
    gray, rgb, st, pth = entries
    assert gray.preprocessing == Preprocessing(12, (0.5,), (0.25,), "L") and gray.source_domain == "mnist"
    assert rgb.preprocessing == Preprocessing(10, (0.0,) * 3, (1.0,) * 3, "RGB")  # the defaults of undeclared archs
    assert pth.path == (root / "w" / "resnet.pth").resolve() and pth.sha256 is not None

    for entry, expected in ((gray, written["cnn"]), (rgb, written["cnn_rgb"])):
        model, variables = entry.load()
        assert model.num_classes == expected["params"]["head"]["kernel"].shape[-1]
        got, want = _flat(variables), _flat(expected)
        assert got.keys() == want.keys()
        for key in want:  # msgpack / npz keep the float32 values exactly
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    state = written["state"]
    (model_st, var_st), (model_pth, var_pth) = st.load(), pth.load()
    assert model_st.num_classes == model_pth.num_classes == 5
    for key, value in _flat(var_st).items():  # two readers, one state dict
        np.testing.assert_array_equal(_flat(var_pth)[key], value, err_msg=key)
    np.testing.assert_array_equal(var_pth["params"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(var_pth["params"]["head"]["kernel"], state["fc.weight"].T)
    np.testing.assert_array_equal(var_pth["batch_stats"]["bn1"]["var"], state["bn1.running_var"])


def _zoo_with(tmp_path, body: str, files=("a.msgpack",)):
    _, variables = _cnn_variables(3, 1, 8, seed=0)
    for name in files:
        checkpoints.save(tmp_path / name, variables)
    path = tmp_path / "zoo.toml"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = '[[model]]\nname = "a"\narchitecture = "small_cnn"\noptions = { width = 4, depth = 2 }\nformat = "msgpack"\n' \
       'path = "a.msgpack"\ninput_size = 8\nchannel_order = "L"\n'


@pytest.mark.parametrize("body, expected", [
    (GOOD + "colour = 1\n", "unknown key(s) ['colour']"),
    (GOOD.replace('format = "msgpack"\n', ""), "missing key(s) ['format']"),
    (GOOD.replace("a.msgpack", "nothere.msgpack"), "nothere.msgpack does not exist"),
    (GOOD.replace('"small_cnn"', '"resnet9"'), "unknown architecture 'resnet9'"),
    (GOOD.replace('"small_cnn"', '"resnet8"'),
     'the embedded zoo\'s \'resnet8\' is architecture = "cifar_resnet8" with options = { width = 8 }'),
    (GOOD.replace('"msgpack"', '"onnx"'), "unknown format 'onnx'"),
    (GOOD + "reference = true\n" + GOOD.replace('"a"', '"b"') + "reference = true\n", "2 models have reference"),
    (GOOD + GOOD, "both named 'a'"),
    (GOOD + 'sha256 = "abc"\n', "sha256 must be 64 hex digits"),
    (GOOD.replace("input_size = 8\n", ""), "declares no preprocessing: give input_size"),
    (GOOD + "mean = [0.1, 0.2]\n", "mean needs 1 value(s)"),
    (GOOD + "std = [0.0]\n", "std positive"),
    (GOOD.replace('"L"', '"RGBA"'), "channel_order must be one of"),
    (GOOD.replace("input_size = 8", 'input_size = "8"'), "input_size must be an integer"),
    (GOOD.replace("depth = 2", "depht = 2"), "do not fit 'small_cnn'"),
    (GOOD + "[extra]\n", "unknown top-level key(s) ['extra']"),
    ("[[model]\nname = 1", "not a valid TOML file"),
    ("", "no models"),
])
def test_toml_errors_name_the_file_and_the_entry(tmp_path, body, expected):
    path = _zoo_with(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_zoo(path)
    assert expected in str(err.value) and str(path) in str(err.value)
    if "[[model]]" in body and "top-level" not in expected and "TOML" not in expected and "both" not in expected \
            and "2 models" not in expected:
        assert "[[model]] #1 ('a')" in str(err.value)


def test_unknown_zoo_name_and_bad_combinations(tmp_path):
    with pytest.raises(ConfigError, match="neither 'embedded' nor 'imagenet' nor an existing TOML file"):
        load_zoo("embeded")
    with pytest.raises(ConfigError, match="weights_dir"):
        load_zoo(tmp_path / "zoo.toml", weights_dir=tmp_path)
    # mobilenet_v2 declares RGB with torchvision's constants: BGR without its own mean and std would have kept
    # them in RGB order, silently swapping the red and blue normalisation
    body = ('[[model]]\nname = "m"\narchitecture = "mobilenet_v2"\nformat = "pth"\npath = "m.pth"\n'
            'channel_order = "BGR"\n')
    (tmp_path / "m.pth").write_bytes(b"not read: load_zoo only lists the entry")
    with pytest.raises(ConfigError, match="channel_order BGR differs from architecture 'mobilenet_v2''s RGB: give "
                                          "mean and std too"):
        load_zoo(_zoo_with(tmp_path, body, files=()))
    (entry,) = load_zoo(_zoo_with(tmp_path, body + "mean = [0.406, 0.456, 0.485]\nstd = [0.225, 0.224, 0.229]\n",
                                  files=()))
    assert entry.preprocessing.mean == (0.406, 0.456, 0.485) and entry.preprocessing.channel_order == "BGR"


def test_load_checks_sha256_then_finiteness(tmp_path):
    path = _zoo_with(tmp_path, GOOD + f'sha256 = "{"0" * 64}"\n')
    (entry,) = load_zoo(path)
    with pytest.raises(CheckpointError, match="sha256"):
        entry.load()
    _, variables = _cnn_variables(3, 1, 8, seed=0)
    variables["params"]["conv1"]["kernel"][0, 0, 0, 0] = np.nan
    checkpoints.save(tmp_path / "a.msgpack", variables)
    (entry,) = load_zoo(_zoo_with(tmp_path, GOOD, files=()))
    with pytest.raises(CheckpointError, match="impossible weights"):
        entry.load()


def test_architecture_mismatch_and_headless_files_are_checkpoint_errors(tmp_path):
    state = torch_resnet_state("basic", (1, 1, 1), 4, 5, False)
    save_file(state, str(tmp_path / "r.safetensors"))
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _write_pth(tmp_path / "r.pth", headless)
    body = ('[[model]]\nname = "wide"\narchitecture = "cifar_resnet8"\noptions = { width = 8 }\n'
            'format = "safetensors"\npath = "r.safetensors"\ninput_size = 16\n'
            '[[model]]\nname = "headless"\narchitecture = "cifar_resnet8"\noptions = { width = 4 }\n'
            'format = "pth"\npath = "r.pth"\ninput_size = 16\n')
    wide, nohead = load_zoo(_zoo_with(tmp_path, body, files=()))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        wide.load()
    with pytest.raises(CheckpointError, match="no classifier tensor 'fc.weight'"):
        nohead.load()



def test_a_misdeclared_format_is_named_with_the_fix(zoo_dir, tmp_path):
    """Each file's bytes are recognised (torch.save's zip layout too), and a reader's failure on a file of another
    format says which one and how to declare it."""
    root, written = zoo_dir
    w = root / "w"
    state = written["state"]
    storages = {str(i): np.ascontiguousarray(a).reshape(-1) for i, a in enumerate(state.values())}
    write_zip(tmp_path / "zip.pth", ODict({name: tensor(storages, str(i), 0, a.shape, (1,) * a.ndim, legacy=False)
                                           for i, (name, a) in enumerate(state.items())}), storages)
    (tmp_path / "text.txt").write_text("not weights")
    assert [sniff_format(p) for p in (w / "cnn.msgpack", w / "cnn.npz", w / "resnet.safetensors", w / "resnet.pth",
                                      tmp_path / "zip.pth", tmp_path / "text.txt", tmp_path / "absent")] == [
        "msgpack", "npz", "safetensors", "pth", "pth", None, None]
    body = "".join(f'[[model]]\nname = "{name}"\narchitecture = "{arch}"\noptions = {{ width = 4{extra} }}\n'
                   f'format = "{declared}"\npath = "{w / file}"\ninput_size = 16\n'
                   for name, arch, extra, declared, file in (
                       ("st-as-msgpack", "cifar_resnet8", "", "msgpack", "resnet.safetensors"),
                       ("msgpack-as-st", "small_cnn", ", depth = 2", "safetensors", "cnn.msgpack"),
                       ("pth-as-npz", "cifar_resnet8", "", "npz", "resnet.pth")))
    (tmp_path / "zoo.toml").write_text(body, encoding="utf-8")
    for entry, actual in zip(load_zoo(tmp_path / "zoo.toml"), ("safetensors", "msgpack", "pth")):
        with pytest.raises(CheckpointError, match=f'look like format {actual!r}.*set format = "{actual}" for '
                                                  f"{entry.name!r}"):
            entry.load()


# --------------------------------------------------------------------------- preprocessing


def _pil_prepare(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Independent: luma / repeat in numpy, Pillow's float bilinear resize per channel, numpy normalisation."""
    if pre.channel_order == "L" and images.shape[-1] == 3:
        images = images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    elif pre.channel_order != "L" and images.shape[-1] == 1:
        images = np.concatenate([images] * 3, axis=-1)
    if pre.channel_order == "BGR":
        images = images[..., ::-1]
    size = pre.input_size
    resized = np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), "F")
                                             .resize((size, size), Image.BILINEAR))
                                  for c in range(img.shape[-1])], axis=-1) for img in images])
    return (resized - np.float32(pre.mean)) / np.float32(pre.std)


@pytest.mark.parametrize("pre, channels, side", [
    (Preprocessing(64, *TORCHVISION, "RGB"), 1, 28),          # gray -> RGB, upsampled
    (Preprocessing(13, (0.3,), (0.5,), "L"), 3, 40),          # RGB -> luma, downsampled (antialiased)
    (Preprocessing(31, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3), "BGR"), 3, 24),
    (Preprocessing(227, (103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3, "BGR"), 3, 28),  # Caffe
])
def test_prepare_matches_pillow_and_numpy(pre, channels, side):
    images = np.random.default_rng(0).random((5, side, side, channels), dtype=np.float32)
    got = pre.prepare(images, batch_size=2)
    assert got.shape == (5, pre.input_size, pre.input_size, pre.channels) and got.dtype == np.float32
    # float32 resizes agree to a few ulps of [0, 1] values; normalising divides that by std.
    np.testing.assert_allclose(got, _pil_prepare(images, pre), rtol=0, atol=1e-5 / min(pre.std))


def test_prepare_returns_model_ready_images_unchanged_and_checks_shapes():
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    assert EMBEDDED_PREPROCESSING.prepare(images) is images
    with pytest.raises(LinfitError, match="C = 1 .* or 3"):
        EMBEDDED_PREPROCESSING.prepare(np.zeros((2, 8, 8, 4), np.float32))


# --------------------------------------------------------------------------- data paths


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_load_data_detects_each_kind(tmp_path, png_folder):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 9, 9), dtype=np.uint8), np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    ds = load_data(tmp_path / "pairs.npz", seed=1)
    assert data_kind(tmp_path / "pairs.npz") == "npz" and ds.name == "pairs"
    assert (np.bincount(ds.y_test) == 2).all() and (np.bincount(ds.y_train) == 8).all()  # round(10 * 0.2) per class
    together = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(map(bytes, (together * 255).round().astype(np.uint8))) == sorted(map(bytes, x[..., None]))

    idx = tmp_path / "digits"
    idx.mkdir()
    _write_idx(idx / "train-images-idx3-ubyte.gz", x[:20], gz=True)
    _write_idx(idx / "train-labels-idx1-ubyte.gz", y[:20].astype(np.uint8), gz=True)
    _write_idx(idx / "t10k-images-idx3-ubyte", x[20:], gz=False)
    _write_idx(idx / "t10k-labels-idx1-ubyte", y[20:].astype(np.uint8), gz=False)
    ds = load_data(idx)
    assert data_kind(idx) == "idx" and ds.name == "digits"
    np.testing.assert_array_equal(ds.x_test[..., 0], x[20:] / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, y[:20])

    ds = load_data(png_folder)  # native size and colour, 80/20 split
    assert data_kind(png_folder) == "image folder" and ds.name == "blobs"
    assert ds.x_train.shape[1:] == (24, 24, 3) and ds.class_names == ("circle", "square", "star")
    first = np.asarray(Image.open(png_folder / "circle" / "0.png"), np.float32) / 255
    assert any(np.array_equal(first, img) for img in np.concatenate([ds.x_train, ds.x_test]))
    for name in ("a", "b"):
        gray = tmp_path / "gray" / name
        gray.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8), "L").save(gray / f"{i}.png")
    assert load_data(tmp_path / "gray").x_train.shape[1:] == (5, 7, 1)


def test_load_data_tfds_data_dir(tmp_path):
    import tensorflow_datasets as tfds

    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert data_kind(tmp_path) == "tfds"
    with tfds.testing.mock_data(num_examples=6):
        for path in (tmp_path, tmp_path / "mnist", tmp_path / "mnist" / "3.0.1"):
            ds = load_data(path)
            assert ds.name.startswith("mnist") and ds.x_train.shape == (6, 28, 28, 1)


def test_load_data_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_data(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="must be an .npz"):
        load_data(tmp_path / "notes.txt")
    (tmp_path / "idx").mkdir()
    _write_idx(tmp_path / "idx" / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8), gz=False)
    with pytest.raises(DatasetError, match="no file for the train labels"):
        load_data(tmp_path / "idx")
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 3)), y=np.zeros(5, int))
    with pytest.raises(DatasetError, match="one row per image"):
        load_data(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- select on both


def test_select_own_zoo_on_own_images_each_model_at_its_own_preprocessing(zoo_dir, png_folder, monkeypatch, capsys):
    import linfit.select as select_module

    root, _ = zoo_dir
    seen = {}
    real = select_module.extract_inputs

    def recording(model, variables, x, *args, model_name, **kwargs):
        seen[model_name] = np.asarray(x)
        return real(model, variables, x, *args, model_name=model_name, **kwargs)

    monkeypatch.setattr(select_module, "extract_inputs", recording)
    status = main(["select", "--zoo", str(root / "zoo.toml"), "--data", str(png_folder), "--regime", "5shot",
                   "--scores", "lfc", "leep", "linearized_loss", "--plot", "", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert "task blobs:5shot: 4 models scored on N=15 training images" in out
    for name in ("cnn/gray", "cnn/rgb", "resnet/st *", "resnet/pth"):
        assert name in out
    subset = load_task("blobs:5shot", dataset=load_data(png_folder), seed=0).scoring_set(per_class=25, seed=0)
    for entry in load_zoo(root / "zoo.toml"):
        np.testing.assert_allclose(seen[entry.name], _pil_prepare(subset.x, entry.preprocessing), rtol=0,
                                   atol=1e-5 / min(entry.preprocessing.std), err_msg=entry.name)


def test_select_names_the_model_whose_inputs_are_not_finite(zoo_dir, png_folder, monkeypatch, capsys):
    """Weights that pass the load checks but overflow in the forward pass: the error names the model and its file."""
    import linfit.select as select_module

    root, _ = zoo_dir
    real = select_module.extract_inputs

    def overflowing(model, variables, x, *args, model_name, **kwargs):
        inputs, seconds = real(model, variables, x, *args, model_name=model_name, **kwargs)
        if model_name == "resnet/pth":
            inputs["features"] = np.full_like(inputs["features"], np.inf)
        return inputs, seconds

    monkeypatch.setattr(select_module, "extract_inputs", overflowing)
    assert main(["select", "--zoo", str(root / "zoo.toml"), "--models", "cnn/gray", "resnet/pth", "--data",
                 str(png_folder), "--regime", "5shot", "--scores", "lfc", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model resnet/pth (checkpoint " in err and "resnet.pth): features contains" in err
    assert "record its sha256" in err and "Traceback" not in err


def test_select_json_ranks_the_toml_zoo(zoo_dir, png_folder, capsys):
    root, _ = zoo_dir
    assert main(["select", "--zoo", str(root / "zoo.toml"), "--models", "cnn/gray", "resnet/pth", "--data",
                 str(png_folder), "--regime", "5shot", "--scores", "lfc", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "blobs:5shot" and {m["model"] for m in result["models"]} == {"cnn/gray", "resnet/pth"}


@pytest.mark.parametrize("argv, expected", [
    (["--task", "hebrew:5shot", "--data", "x"], "give one of them"),
    (["--regime", "5shot"], "--regime goes with --data"),
    (["--data", "DATA", "--regime", "5shots"], "unknown regime '5shots' (--regime)"),
    (["--data", "nowhere"], "no such file or folder"),
    (["--zoo", "ZOO", "--models", "cnn/grey"], "did you mean 'cnn/gray'"),
    (["--zoo", "nosuch.toml"], "nor an existing TOML file"),
    (["--zoo", "ZOO", "--scores", "domain_similarity", "--data", "DATA"], "only for the embedded domains"),
])
def test_select_zoo_and_data_errors_before_any_work(argv, expected, zoo_dir, png_folder, capsys, monkeypatch):
    import linfit.select as select_module

    monkeypatch.setattr(select_module, "extract_inputs", lambda *a, **k: pytest.fail("work started"))
    root, _ = zoo_dir
    argv = [str(root / "zoo.toml") if a == "ZOO" else str(png_folder) if a == "DATA" else a for a in argv]
    assert main(["select", *argv, "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("linfit: error: ") and "\n" not in line and expected in line, line


# --------------------------------------------------------------------------- the ImageNet zoo


def test_imagenet_zoo_lists_the_installed_checkpoints_with_their_preprocessing():
    from linfit.zoo import imagenet

    entries = load_zoo("imagenet")
    assert [e.name for e in entries] == [c.name for c in imagenet.checkpoints()]
    by_name = {e.name: e for e in entries}
    lite0 = by_name["imagenet/efficientnet_lite0"]
    assert lite0.preprocessing == Preprocessing(224, (127 / 255,) * 3, (128 / 255,) * 3, "RGB")  # (x - 127) / 128
    assert lite0.format == "pth" and lite0.sha256 and lite0.path.is_file() and lite0.head
    assert lite0.source_domain == "imagenet" and by_name["imagenet/mobilenet_v2"].head is False
    squeeze = by_name["imagenet/squeezenet1_1"]
    assert squeeze.format == "keras-pickle" and squeeze.preprocessing.channel_order == "BGR"


@pytest.mark.slow
def test_select_imagenet_zoo_on_own_images(png_folder, monkeypatch, capsys):
    import linfit.select as select_module

    seen = {}
    real = select_module.extract_inputs

    def recording(model, variables, x, *args, model_name, **kwargs):
        seen[model_name] = (np.asarray(x), model.num_classes)
        return real(model, variables, x, *args, model_name=model_name, **kwargs)

    monkeypatch.setattr(select_module, "extract_inputs", recording)
    assert main(["select", "--zoo", "imagenet", "--data", str(png_folder), "--regime", "5shot", "--scores", "lfc",
                 "leep", "--quiet"]) == 0
    out = capsys.readouterr().out
    entries = load_zoo("imagenet")
    assert f"task blobs:5shot: {len(entries)} models scored on N=15" in out
    subset = load_task("blobs:5shot", dataset=load_data(png_folder), seed=0).scoring_set(per_class=25, seed=0)
    for entry in entries:
        x, classes = seen[entry.name]
        assert classes == 1000, entry.name  # ImageNet-1k heads (MobileNetV2's file has none: zeros)
        np.testing.assert_allclose(x, _pil_prepare(subset.x, entry.preprocessing), rtol=0,
                                   atol=1e-5 / min(entry.preprocessing.std), err_msg=entry.name)
