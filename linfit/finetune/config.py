"""Fine-tuning configuration, the learning-rate schedule and the PyTorch-style SGD direction.

The paper's protocol (Deshpande et al. 2021, §5.5 of ``shared/reference/paper.md``) is
``FinetuneConfig.paper()``: a fresh head, SGD with Nesterov momentum 0.9, weight decay 1e-4 added to
the gradient (as ``torch.optim.SGD`` does), batch 32, 30 epochs, learning rate ×0.1 at epochs 15 and 25.

Example::

    >>> cfg = FinetuneConfig.paper(learning_rate=0.005)
    >>> sched = learning_rate_schedule(cfg, steps_per_epoch=10)
    >>> [round(float(sched(k)), 6) for k in (149, 150, 250)]
    [0.005, 0.0005, 5e-05]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import optax

from linfit.errors import ConfigError
from linfit.finetune.losses import LOSS_FUNCTIONS
from linfit.models import functional
from linfit.tree import ParamsFilter

MODES = ("full", "linear_probe", "subset", "linearized")
BN_MODES = ("train", "frozen")
HEAD_INITS = (None, *functional.HEAD_INITS)  # None keeps the model's head


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines one fine-tuning run except the data and the model.

    Attributes:
      epochs: passes over the training set.
      batch_size: samples per SGD step (a batch larger than N uses N; the last batch of an epoch
        holds the remainder, as PyTorch's ``DataLoader(drop_last=False)``).
      learning_rate: initial step size η.
      momentum, nesterov: heavy-ball / Nesterov momentum (PyTorch's SGD rule, see ``sgd_direction``).
      weight_decay: λ added to the gradient as λ·(w − c) before the momentum (L2-in-gradient, PyTorch's
        SGD), applied to every trained leaf.
      weight_decay_center: c: ``"zero"`` (c = 0, PyTorch, the real run's objective; the linearised run
        then optimises exactly the real objective with f replaced by f_lin) or ``"init"`` (c = w0, the
        ½μ‖w − w0‖² convention of ``linfit.dynamics``'s closed form, with μ = λ·N for the mean loss).
      milestones: epochs (0-based count of finished epochs) at which the learning rate is multiplied
        by ``gamma`` (PyTorch's ``MultiStepLR``); must be strictly increasing.
      gamma: the decay factor.
      loss: ``"ce"`` (softmax cross-entropy) or ``"mse"`` (½‖f(x) − onehot(y)‖², see ``losses``).
      mode: ``"full"`` (every parameter), ``"linear_probe"`` (the ``head`` sub-module only, features and
        BatchNorm statistics frozen), ``"subset"`` (the leaves chosen by ``params_filter``) or
        ``"linearized"`` (SGD on the first-order Taylor model ``linearize(apply_fn, w0)`` with
        BatchNorm statistics frozen at their pre-trained values; ``params_filter`` optionally restricts
        the linearisation to a subset, the rest held at w0).
      params_filter: a ``linfit.tree`` filter; required for ``"subset"``; for ``"linear_probe"`` it
        defaults to ``r"^head/"``; not allowed for ``"full"``.
      bn: ``"train"`` (batch statistics in the forward pass and running statistics updated, torchvision's
        fine-tuning default) or ``"frozen"`` (evaluation mode throughout). Only modes ``"full"`` and
        ``"subset"`` honour ``"train"``; in ``"subset"`` every BatchNorm layer's statistics then update,
        trained or not (as a PyTorch module in ``train()`` mode with ``requires_grad=False``).
      head_init: ``None`` keeps the model's head; ``"zeros"`` or ``"lecun_normal"`` first replaces it by
        a fresh C-way head (``linfit.models.replace_head``).
      seed: seeds the data order and the new head (``jax.random``); equal seeds give identical runs.
      eval_every_epoch: evaluate the evaluation sets after every epoch (else only after the last).
      eval_batch_size: batch size of evaluation forward passes.

    Raises ``ConfigError`` (from the constructor and ``replace``) for an unknown choice, a non-positive count or
    step size, a negative or NaN momentum, weight decay or gamma, milestones not strictly increasing, mode
    ``"subset"`` without a ``params_filter`` or mode ``"full"`` with one.
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    weight_decay_center: str = "zero"
    milestones: tuple[int, ...] = (15, 25)
    gamma: float = 0.1
    loss: str = "ce"
    mode: str = "full"
    params_filter: ParamsFilter = None
    bn: str = "train"
    head_init: str | None = None
    seed: int = 0
    eval_every_epoch: bool = True
    eval_batch_size: int = 256

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        _check_choice("mode", self.mode, MODES)
        _check_choice("loss", self.loss, tuple(LOSS_FUNCTIONS))
        _check_choice("bn", self.bn, BN_MODES)
        _check_choice("weight_decay_center", self.weight_decay_center, ("zero", "init"))
        _check_choice("head_init", self.head_init, HEAD_INITS)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(
                f"epochs, batch_size and eval_batch_size must be >= 1; got {self.epochs}, "
                f"{self.batch_size}, {self.eval_batch_size}"
            )
        if not (self.learning_rate > 0 and self.momentum >= 0 and self.weight_decay >= 0 and self.gamma >= 0):
            raise ConfigError(
                f"need learning_rate > 0, momentum >= 0, weight_decay >= 0, gamma >= 0; got "
                f"{self.learning_rate}, {self.momentum}, {self.weight_decay}, {self.gamma}"
            )
        if any(b <= a for a, b in zip(self.milestones[:-1], self.milestones[1:], strict=True)) or any(
            m < 0 for m in self.milestones
        ):
            raise ConfigError(f"milestones must be non-negative and strictly increasing; got {self.milestones}")
        if self.mode == "subset" and self.params_filter is None:
            raise ConfigError('mode "subset" needs a params_filter (e.g. a regex such as "^head/|stage4/")')
        if self.mode == "full" and self.params_filter is not None:
            raise ConfigError('mode "full" trains every parameter and takes no params_filter; use mode "subset" '
                              "to train the leaves it selects")

    @classmethod
    def paper(cls, **overrides) -> FinetuneConfig:
        """The paper's protocol (§5.5) with a new ``lecun_normal`` head.

        Why ``lecun_normal`` and not a zero head: with a zero head every gradient that reaches the backbone
        at w0 is zero, so the linearised model (whose Jacobian is frozen at w0) could only move its head
        and mode ``"linearized"`` would collapse to a linear probe; a small random head is also what
        torchvision's ``nn.Linear`` default gives (variance 1/(3·fan_in) there, 1/fan_in here).
        ``overrides`` replace any field, e.g. ``paper(epochs=3, batch_size=8)`` for CPU.
        """
        base = dict(
            epochs=30,
            batch_size=32,
            learning_rate=0.01,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            milestones=(15, 25),
            gamma=0.1,
            loss="ce",
            mode="full",
            bn="train",
            head_init="lecun_normal",
        )
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> FinetuneConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}; got {value!r}")


def learning_rate_schedule(config: FinetuneConfig, steps_per_epoch: int) -> optax.Schedule:
    """η_k for the k-th SGD step (0-based): ``learning_rate · gamma^{#(milestones m with k >= m·steps_per_epoch)}``.

    An ``optax.piecewise_constant_schedule`` in steps; step k belongs to epoch ⌊k / steps_per_epoch⌋, so
    this equals PyTorch's ``MultiStepLR(milestones, gamma)`` stepped once per epoch. Raises ``ConfigError``
    when ``steps_per_epoch < 1``.
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    return optax.piecewise_constant_schedule(
        config.learning_rate, {m * steps_per_epoch: config.gamma for m in config.milestones}
    )


def sgd_direction(config: FinetuneConfig) -> optax.GradientTransformation:
    """The update direction d_k of PyTorch's ``SGD(momentum, nesterov, weight_decay)``, before the step size.

    With g_k the gradient, λ the weight decay and μ the momentum:
    ``g'_k = g_k + λ w_k`` (the training loop passes ``w_k − w0`` for ``weight_decay_center="init"``),
    ``b_k = μ b_{k-1} + g'_k`` (b_{-1} = 0), ``d_k = g'_k + μ b_k`` (Nesterov) or ``d_k = b_k``;
    the step is ``w_{k+1} = w_k − η_k d_k``. This is ``optax.sgd`` after ``optax.add_decayed_weights``
    without its learning-rate scaling: the training loop passes η_k to the compiled step as an argument,
    so one compilation serves every learning rate of a sweep.
    """
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.trace(decay=config.momentum, nesterov=config.nesterov),
    )
