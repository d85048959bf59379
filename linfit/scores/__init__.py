"""Model-selection scores: one family per module, a registry by name; higher is always better."""

from linfit.scores.registry import INPUT_NAMES, Score, get, names, register
