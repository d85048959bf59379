"""Wording shared by linfit's reports and messages."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``counted(1, "task group") == "1 task group"``,
    ``counted(3, "model") == "3 models"`` (regular plurals only)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
