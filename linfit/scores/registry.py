"""The score registry: every model-selection score by name, with what it needs.

A score is a pure function of arrays: ``fn(*needed_inputs, labels, **options) -> float``. The
benchmark extracts each input once per (model, task) and hands the same arrays to every score, so ten
scores on one model cost one forward pass. Higher is better for every registered score (scores whose
paper quantity is a loss are negated).

Input names a score may declare in ``needs`` (all arrays are over the same N scoring samples):

* ``"features"``        ``[N, D]`` penultimate features of the pre-trained model;
* ``"source_probs"``    ``[N, Cs]`` softmax outputs of the pre-trained (source) head;
* ``"ntk"``             ``[N, N]`` the fine-tuning NTK at w0 w.r.t. every parameter, traced over the logits and
                        averaged over the new head's random initialisation (``linfit.scores.lgc.lgc_kernel``);
* ``"ntk_last_conv"``   ``[N, N]`` the same kernel w.r.t. the last convolution's kernel only (the paper's LGC);
* ``"ntk_last_conv_projected"``  ``[N, N]`` the paper's estimate of ``"ntk_last_conv"``: per-sample gradients
                        randomly projected to ``linfit.scores.lgc.PAPER_PROJECTION_DIM`` dimensions;
* ``"source_class_means"``  ``[Cs, D]`` class-mean source features and ``"source_class_counts"`` ``[Cs]``;
* ``"probe_features"``  ``[N, Dp]`` features of a small network trained on the target task (RSA);
* ``"key"``             a ``jax.random`` key (scores that sample).

Example::

    >>> from linfit import scores
    >>> s = scores.get("lfc")
    >>> s.needs
    ('features',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from linfit.errors import ConfigError, ShapeError, check_known
from linfit.scores.summaries import SUMMARY

INPUT_NAMES = (
    "features",
    "source_probs",
    "ntk",
    "ntk_last_conv",
    "ntk_last_conv_projected",
    "source_class_means",
    "source_class_counts",
    "probe_features",
    "key",
)

SOURCE_INPUTS = frozenset({"source_class_means", "source_class_counts"})
"""The inputs computed from the source dataset's images (Domain Similarity)."""


@dataclasses.dataclass(frozen=True)
class Score:
    """A registered score.

    Attributes:
      name: registry name (kebab/snake case, e.g. ``"lfc"``, ``"logme"``).
      fn: ``fn(*[inputs[k] for k in needs], labels, **options) -> float``.
      needs: names of the shared inputs the score reads (see the module docstring).
      reference: the paper it implements.
      cost: a cost class: ``"forward"`` (one forward pass), ``"forward+backward"``,
        ``"probe-training"`` (trains a small model), ``"source-data"`` (needs source statistics),
        ``"free"``.
      summary: one plain-language line on what it measures (``linfit scores``, the legend of ``linfit select``).
    """

    name: str
    fn: Callable[..., float]
    needs: tuple[str, ...]
    reference: str
    cost: str
    summary: str

    def __call__(self, labels: Any, /, **inputs: Any) -> float:
        """Compute the score from ``labels [N]`` and the declared inputs (extra inputs are ignored;
        inputs that are not in ``needs`` nor in ``INPUT_NAMES`` are passed on as options).

        Args:
          labels: ``[N]`` target labels, as the score function takes them (integers in ``0..C-1`` or class names).
          inputs: the arrays named in ``needs`` (shapes in the module docstring, e.g. ``features [N, D]``), plus
            any options of the score function.

        Returns:
          The score as a Python ``float`` (higher is better).

        Errors of the score function itself (``fn``), e.g. ``ShapeError``, ``NonFiniteError`` or ``LabelError``
        for unusable arrays or labels, propagate unchanged.

        Raises:
          ShapeError: an input named in ``needs`` is missing from ``inputs``.
        """
        missing = [k for k in self.needs if k not in inputs]
        if missing:
            raise ShapeError(f"score {self.name!r} needs inputs {list(self.needs)}; missing {missing}")
        options = {k: v for k, v in inputs.items() if k not in INPUT_NAMES}
        return float(self.fn(*[inputs[k] for k in self.needs], labels, **options))


_REGISTRY: dict[str, Score] = {}


def register(name: str, *, needs: tuple[str, ...], reference: str, cost: str, summary: str | None = None):
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged. ``summary``: what the score
    measures, in one line (default: the built-in scores' line in ``linfit.scores.summaries``, else the first line
    of ``fn``'s docstring). Raises ``ConfigError`` for an unknown input name or a name registered twice."""
    unknown = [k for k in needs if k not in INPUT_NAMES]
    if unknown:
        raise ConfigError(f"score {name!r} declares unknown inputs {unknown}; known: {INPUT_NAMES}")

    def decorate(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ConfigError(f"score {name!r} registered twice; register it under another name")
        line = summary or SUMMARY.get(name) or (fn.__doc__ or "").strip().split("\n")[0] or "(no summary)"
        _REGISTRY[name] = Score(name=name, fn=fn, needs=tuple(needs), reference=reference, cost=cost, summary=line)
        return fn

    return decorate


def get(name: str) -> Score:
    """The registered score called ``name``."""
    if name not in _REGISTRY:
        check_known("score", [name], names(), "linfit.scores.names()")
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of all registered scores, sorted."""
    return sorted(_REGISTRY)
