"""linfit's exceptions: one base class, one subclass per kind of mistake.

Every message says what was wrong and what was expected, e.g.
``LabelError: labels must lie in 0..C-1 with C=3; got values [-1, 5]``.
"""

import numbers


class LinfitError(Exception):
    """Base class of every error linfit raises on purpose."""


class ShapeError(LinfitError, ValueError):
    """Arrays have the wrong rank, inconsistent sizes or a non-numeric dtype."""


class InputValueError(LinfitError, ValueError):
    """An array of the right shape holds values the computation cannot use: negative weights or counts, rows that
    are not probabilities, features that are all zero or have no variance."""


class LabelError(LinfitError, ValueError):
    """Labels are unusable: outside 0..C-1, a single class, too few samples per class."""


class KernelError(LinfitError, ValueError):
    """A matrix passed as a neural tangent kernel is not one (e.g. it has substantially negative eigenvalues)."""


class NonFiniteError(LinfitError, ValueError):
    """An input contains NaN or infinite values."""


class TreeMismatchError(LinfitError, ValueError):
    """Two parameter trees (or a tree and a model) do not have the same structure or shapes."""


class ParamsFilterError(LinfitError, ValueError):
    """A parameter filter selects no parameter, or is not understood."""


class VmapAxesError(LinfitError, ValueError):
    """``vmap_axes=0`` was requested for a model whose samples interact (e.g. BatchNorm in train mode)."""


class CheckpointError(LinfitError):
    """A checkpoint cannot be read, or does not match the model it is loaded into."""


class DatasetError(LinfitError):
    """A dataset or task cannot be found, parsed or sampled as asked."""


class UnknownNameError(LinfitError, KeyError):
    """A name is not in a registry (models, scores, datasets, tasks)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(LinfitError, ValueError):
    """An option or configuration value is invalid (out of range, inconsistent with other options)."""


def check_known(kind: str, given, known, listing: str) -> None:
    """Raise :class:`UnknownNameError` naming every entry of ``given`` that is not in ``known``.

    Args:
      kind: what the names are, e.g. ``"zoo model"``.
      given: the names asked for; known: the valid names.
      listing: where the valid names are listed, e.g. ``"`linfit zoo list` (linfit.zoo.names())"``.
    """
    import difflib

    known = list(known)
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        starting = [k for k in known if str(k).startswith(f"{name}/")]  # a group's prefix, e.g. "resnet8"
        if starting:
            hints.append(f"{name!r} ({len(starting)} start with {name + '/'!r}, e.g. {starting[0]!r})")
            continue
        close = difflib.get_close_matches(str(name), known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownNameError(f"unknown {kind}{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                           f"{listing} lists the {len(known)} known ones")


def is_count(value, minimum: int = 1) -> bool:
    """Whether ``value`` is an integer (Python or numpy; not a ``bool``) ``>= minimum``: the test behind every count
    and seed argument, each caller raising its own error."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
