"""Shared pytest configuration: float32 JAX on CPU, deterministic seeds, and no compilation cache shared with the
user's own runs (``linfit.cli.compile_cache_dir``; ``test_cli`` tests the cache in a folder of its own)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["LINFIT_COMPILE_CACHE"] = "off"
