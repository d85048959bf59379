"""What the embedded zoo contains: architectures, model entries and the pre-training recipe.

A CPU-scale mirror of Deshpande et al. 2021, §5.2–5.3 (``shared/reference/paper.md``). For each of two
architectures (``resnet8``: a width-8 CIFAR ResNet-8, the paper's ResNet-101; ``densenet``: a narrow
three-block DenseNet-BC, the paper's DenseNet-169):

* ``<arch>/generalist`` — trained on the union of the 8 source domains with one head over all their classes
  (the paper's ImageNet expert; ``reference=True``);
* ``<arch>/<domain>/scratch`` — one expert per source domain trained from a random initialisation (×);
* ``<arch>/<domain>/from-generalist`` — one expert per source domain initialised from the generalist (✓);
* ``<arch>/multibn/<domain>`` — the 8 candidates of one multi-domain expert with domain-specific BatchNorm
  (shared convolutions; BatchNorm scale, bias, statistics and head per domain), trained round-robin.

That is 2 × (1 + 8 × 2 + 8) = 50 loadable models (42 = 2 × (1 + 8 × 2) single-domain + generalist models,
plus 2 × 8 multi-BN candidates).
"""

from __future__ import annotations

import dataclasses
import zlib
from types import MappingProxyType

from linfit.data.embedded import source_domains
from linfit.errors import check_known

KINDS = ("generalist", "scratch", "from-generalist", "multibn")
MULTIBN_ARCH = "resnet8"
"""The architecture of the multi-domain BatchNorm expert (the paper's multi-domain expert is a ResNet-101)."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A zoo architecture: ``linfit.models.create(base, num_classes, **kwargs)``."""

    name: str
    base: str
    kwargs: MappingProxyType

    def create(self, num_classes: int):
        """A new ``flax.linen.Module`` of this architecture with a ``num_classes``-way head (not initialised).

        Raises:
          ShapeError: ``num_classes`` is not an integer ``>= 1`` (:func:`linfit.models.create`).
        """
        from linfit.models import create

        return create(self.base, num_classes, **dict(self.kwargs))


ARCHITECTURES: dict[str, Architecture] = {
    "resnet8": Architecture("resnet8", "cifar_resnet8", MappingProxyType({"width": 8})),
    "densenet": Architecture(
        "densenet", "small_densenet", MappingProxyType({"growth_rate": 6, "num_init_features": 12, "bn_size": 2})
    ),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The pre-training recipe shared by every zoo model (the paper's §5.2 recipe, shortened for CPU).

    Attributes:
      epochs: passes over each training set (for the multi-BN expert: passes over each domain).
      batch_size: images per SGD step.
      learning_rate: initial step size, ×``gamma`` at each epoch of ``milestones``.
      momentum, weight_decay: SGD with heavy-ball momentum (no Nesterov) and L2-in-gradient decay.
      per_domain: training images kept per source domain (a seeded random subset, rounded down to a
        multiple of ``batch_size`` so every step has the same shape); ``None`` keeps all.
    """

    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (4,)
    gamma: float = 0.1
    per_domain: int | None = 768

    def to_dict(self) -> dict:
        """The recipe as a JSON-ready ``dict`` ``{field: value}``, tuples (``milestones``) turned into lists."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One loadable zoo model.

    Attributes:
      name: e.g. ``"resnet8/mnist/from-generalist"``.
      arch: key of ``ARCHITECTURES``.
      kind: one of ``KINDS``.
      domain: the source domain, or ``"union"`` for the generalist.
      reference: the generalist (the paper's ImageNet reference model).
    """

    name: str
    arch: str
    kind: str
    domain: str
    reference: bool = False

    @property
    def file_name(self) -> str:
        """The weight file: the name with ``/`` replaced by ``__``, plus ``.msgpack``."""
        return self.name.replace("/", "__") + ".msgpack"

    @property
    def group(self) -> str:
        """Models trained together: the multi-BN candidates of one architecture share ``<arch>/multibn``."""
        return f"{self.arch}/multibn" if self.kind == "multibn" else self.name

    def seed(self, base_seed: int) -> int:
        """The training seed of this model's group: a stable function of ``base_seed`` and ``group``."""
        return (int(base_seed) * 1_000_003 + zlib.crc32(self.group.encode())) % (2**31 - 1)


def entries() -> list[Entry]:
    """Every zoo model in build order (a generalist before the experts initialised from it)."""
    out = []
    for arch in ARCHITECTURES:
        out.append(Entry(f"{arch}/generalist", arch, "generalist", "union", reference=True))
        for domain in source_domains():
            out.append(Entry(f"{arch}/{domain}/scratch", arch, "scratch", domain))
            out.append(Entry(f"{arch}/{domain}/from-generalist", arch, "from-generalist", domain))
        if arch == MULTIBN_ARCH:
            out.extend(Entry(f"{arch}/multibn/{d}", arch, "multibn", d) for d in source_domains())
    return out


def entry(name: str) -> Entry:
    """The entry called ``name``; raises ``UnknownNameError`` listing a few known names otherwise."""
    for e in entries():
        if e.name == name:
            return e
    check_known("zoo model", [name], [e.name for e in entries()], "linfit.zoo.names()")
