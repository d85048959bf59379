"""Shared pytest configuration: float32 JAX on CPU, deterministic seeds."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
