"""Task specs ``"<dataset>:<regime>"`` and their loading (the paper's data regimes, Sec. 4).

Regimes: ``full`` (the whole training split), ``<k>shot`` (``k`` training images per class drawn
deterministically by seed; the paper uses ``5shot``, ``10shot`` (Fig. 1) and ``20shot``). The test
split is always the full test split. A task's dataset is an embedded domain (:data:`catalog.DOMAINS`) or a
dataset an installed package ships (:data:`catalog.PACKAGED`, e.g. ``lfw_faces:20shot``). Example::

    >>> from linfit.data import load_task
    >>> task = load_task("hebrew:5shot", seed=0)
    >>> task.train.x.shape, task.test.x.shape
    ((110, 28, 28, 1), (462, 28, 28, 1))
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import NamedTuple

import numpy as np

from linfit.data import catalog
from linfit.data.dataset import Dataset
from linfit.data.sampling import kshot_indices, scoring_subset
from linfit.errors import DatasetError, UnknownNameError

#: The regimes enumerated by :func:`tasks` (every ``<k>shot`` with k >= 1 is accepted by :func:`parse_task`).
REGIMES = ("5shot", "20shot", "full")
_REGIME = re.compile(r"^(?:full|([1-9][0-9]*)shot)$")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A parsed ``"<dataset>:<regime>"``; ``shots`` is ``None`` for ``full``."""

    dataset: str
    regime: str

    def __post_init__(self):
        parse_regime(self.regime, f" in task {self.dataset}:{self.regime}")

    @property
    def shots(self) -> int | None:
        """The ``k`` of a ``"<k>shot"`` regime as an ``int`` (images per class), or ``None`` for ``"full"``."""
        match = _REGIME.match(self.regime)
        return int(match.group(1)) if match.group(1) else None

    def __str__(self) -> str:
        return f"{self.dataset}:{self.regime}"


class Split(NamedTuple):
    """Images ``x`` ``[N, H, W, C]`` float32 in [0, 1] and labels ``y`` ``[N]`` int32."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A fine-tuning task.

    Attributes:
      spec: the parsed spec.
      train: the training set of the regime (the k-shot subset, or all of the training split).
      test: the FULL test split.
      train_indices: ``[N]`` indices of ``train`` in the dataset's training split.
      class_names: names in label order.
    """

    spec: TaskSpec
    train: Split
    test: Split
    train_indices: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (``len(class_names)``), as an ``int``."""
        return len(self.class_names)

    def scoring_set(self, *, per_class: int = 25, seed: int = 0) -> Split:
        """At most ``per_class`` training images per class (paper Sec. 4), drawn from ``train`` only."""
        idx = scoring_subset(self.train.y, per_class=per_class, seed=seed)
        return Split(self.train.x[idx], self.train.y[idx])


def parse_task(spec: str | TaskSpec) -> TaskSpec:
    """Parse ``"<dataset>:<regime>"`` (e.g. ``"armenian:20shot"``); raises :class:`DatasetError` if malformed.

    The dataset name is checked when the task is loaded (:func:`load_task`), so specs naming user
    datasets parse too.
    """
    if isinstance(spec, TaskSpec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise DatasetError(f"a task spec is '<dataset>:<regime>' with regime in {REGIMES} or '<k>shot'; got {spec!r}")
    name, regime = (part.strip() for part in spec.split(":"))
    if not name:
        raise DatasetError(f"task spec {spec!r} has an empty dataset name")
    return TaskSpec(name, parse_regime(regime, f" in task spec {spec!r}"))


def parse_regime(regime: str, where: str = "") -> str:
    """``regime`` (``"full"`` or ``"<k>shot"``, k >= 1) if well formed; raises :class:`DatasetError` naming it
    (``where``: the context, e.g. the task spec it came from)."""
    if not isinstance(regime, str) or not _REGIME.match(regime):
        raise DatasetError(
            f"unknown regime {regime!r}{where}; expected 'full' or '<k>shot' with k >= 1 "
            f"(the benchmark uses {', '.join(REGIMES)})"
        )
    return regime


def tasks() -> list[str]:
    """Every embedded target domain x regime, as spec strings (targets in catalogue order)."""
    return [f"{name}:{regime}" for name in catalog.names("target") for regime in REGIMES]


def packaged_tasks() -> list[str]:
    """Every dataset of an installed-or-not package (:data:`catalog.PACKAGED`) x regime, as spec strings."""
    return [f"{name}:{regime}" for name in catalog.PACKAGED for regime in REGIMES]


def check_task(spec: str | TaskSpec) -> TaskSpec:
    """Parse ``spec`` and check that it names an embedded dataset or the dataset of an installed package,
    without loading it.

    Raises:
      DatasetError: malformed spec, or the package shipping the dataset is not installed (the message gives the
        ``pip install`` command). UnknownNameError: the dataset is neither.
    """
    spec = parse_task(spec)
    if spec.dataset in catalog.PACKAGED:
        from linfit.data import packaged

        packaged.check_installed(spec.dataset)
    elif spec.dataset not in catalog.DOMAINS:
        close = difflib.get_close_matches(spec.dataset, [*catalog.DOMAINS, *catalog.PACKAGED], n=1)
        raise UnknownNameError(
            f"unknown task dataset {spec.dataset!r}{f' (did you mean {close[0]!r}?)' if close else ''}; embedded targets: {', '.join(catalog.names('target'))} "
            f"(sources: {', '.join(catalog.names('source'))}; from installed packages: "
            f"{', '.join(catalog.PACKAGED)})"
        )
    return spec


def load_task(spec: str | TaskSpec, *, seed: int = 0, dataset: Dataset | None = None) -> Task:
    """Load a task: the regime's training subset (drawn by ``seed``) and the full test split.

    Args:
      spec: ``"<dataset>:<regime>"`` or a :class:`TaskSpec`.
      seed: seed of the k-shot draw (:func:`~linfit.data.kshot_indices`; ignored for ``full``).
      dataset: the dataset to use instead of the embedded one of that name (e.g. from
        :func:`~linfit.data.load_tfds`); its ``name`` must match the spec.

    Raises:
      UnknownNameError: the dataset is neither embedded nor packaged (and none was passed).
      DatasetError: malformed spec, a packaged dataset whose package is missing, or a class has fewer than ``k``
        training images.
    """
    if dataset is None:
        from linfit.data import embedded, packaged

        spec = check_task(spec)
        dataset = packaged.load(spec.dataset) if spec.dataset in catalog.PACKAGED else embedded.load(spec.dataset)
    else:
        spec = parse_task(spec)
    if dataset.name != spec.dataset:
        raise DatasetError(f"task spec names {spec.dataset!r} but the dataset passed is {dataset.name!r}")
    if spec.shots is None:
        idx = np.arange(len(dataset.y_train), dtype=np.int64)
    else:
        classes, counts = np.unique(dataset.y_train, return_counts=True)
        short = [f"{dataset.class_names[c]!r} ({n})" for c, n in zip(classes, counts) if n < spec.shots]
        if short:
            raise DatasetError(
                f"task {spec} asks for {spec.shots} training images per class but {len(short)} "
                f"{'class has' if len(short) == 1 else 'classes have'} fewer in the training split "
                f"(images held out for testing do not count): "
                f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; use a smaller k "
                f"(at most {counts.min()}) or '{spec.dataset}:full'")
        idx = kshot_indices(dataset.y_train, spec.shots, seed=seed)
    return Task(spec=spec, train=Split(dataset.x_train[idx], dataset.y_train[idx]),
                test=Split(dataset.x_test, dataset.y_test), train_indices=idx, class_names=dataset.class_names)
