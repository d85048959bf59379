"""Datasets, task specs and sampling.

* :class:`Dataset` — images ``[N, H, W, C]`` float32 in [0, 1] with integer labels, train and test.
* :mod:`linfit.data.embedded` — the offline zoo-and-tasks pack (8 source and 11 target domains, 28x28).
* :mod:`linfit.data.packaged` — targets that installed packages ship (``lfw_faces``, ``elpv``).
* Task specs ``"<dataset>:<regime>"`` (:func:`parse_task`, :func:`load_task`, :func:`tasks`, :func:`packaged_tasks`),
  stratified deterministic sampling (:func:`kshot_indices`, :func:`scoring_subset`).
* Local loaders that never download: :func:`load_idx`, :func:`load_idx_dataset`,
  :func:`load_image_folder`, :func:`load_arrays`, :func:`load_tfds`; :func:`load_data` detects which one a
  path needs.
"""

from linfit.data.dataset import Dataset, to_float, to_uint8, union
from linfit.data.detect import load_data
from linfit.data.idx import load_idx, load_idx_dataset
from linfit.data.loaders import load_arrays, load_image_folder
from linfit.data.sampling import kshot_indices, scoring_subset
from linfit.data.tasks import (
    REGIMES,
    Split,
    Task,
    TaskSpec,
    check_task,
    load_task,
    packaged_tasks,
    parse_regime,
    parse_task,
    tasks,
)
from linfit.data.tfds_source import load_tfds

__all__ = [
    "REGIMES",
    "Dataset",
    "Split",
    "Task",
    "TaskSpec",
    "check_task",
    "kshot_indices",
    "load_arrays",
    "load_data",
    "load_idx",
    "load_idx_dataset",
    "load_image_folder",
    "load_task",
    "load_tfds",
    "packaged_tasks",
    "parse_regime",
    "parse_task",
    "scoring_subset",
    "tasks",
    "to_float",
    "to_uint8",
    "union",
]
