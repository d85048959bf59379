"""Where the time goes: wall, CPU and JAX compilation seconds of a block of work.

A jitted function is traced, lowered and compiled by XLA on its first call for each argument signature; later
calls reuse the executable. On a zoo of many models of a few architectures that one-off cost says nothing about
a score, so linfit times it apart: JAX reports the duration of every trace, lowering and XLA compilation through
``jax.monitoring`` (events ``COMPILE_EVENTS``), and :class:`Stopwatch` sums those that end inside its block.

Example::

    >>> import jax, jax.numpy as jnp
    >>> with Stopwatch() as first:
    ...     _ = jax.jit(lambda a: a * 2)(jnp.ones(3))      # traced and compiled, then run
    >>> first.compilations >= 1 and first.compile_seconds > 0
    True
    >>> first.run_seconds == first.wall_seconds - first.compile_seconds
    True
"""

from __future__ import annotations

import time

import jax

#: The ``jax.monitoring`` duration events of one compilation: tracing to a jaxpr, lowering to MLIR, XLA compile.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND_COMPILE = COMPILE_EVENTS[2]
#: The ``jax.monitoring`` event of a compilation served from JAX's persistent compilation cache.
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

# Running totals since the listeners were registered (monotonic counters, like a clock).
_totals = {"seconds": 0.0, "compilations": 0, "cached": 0}
_listening = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event in COMPILE_EVENTS:
        _totals["seconds"] += duration
        _totals["compilations"] += event == _BACKEND_COMPILE


def _on_event(event: str, **kwargs) -> None:
    _totals["cached"] += event == CACHE_HIT_EVENT


def _compile_clock() -> tuple[float, int, int]:
    """``(seconds, compilations, cached)`` spent compiling, compilations, and those of them read from the
    persistent compilation cache, since linfit started listening (registered on first use)."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    return _totals["seconds"], _totals["compilations"], _totals["cached"]


class Stopwatch:
    """Times a block: ``with Stopwatch() as watch: ...`` (or ``watch = Stopwatch().start(); ...; watch.stop()``).
    After the block:

    Attributes:
      wall_seconds: elapsed wall time (``time.perf_counter``).
      cpu_seconds: CPU time of the whole process, user + system, all threads (``time.process_time``).
      compile_seconds: wall time of the JAX tracing, lowering and XLA compilation done in the block.
      compilations: how many XLA compilations the block ran (0 when every jitted function was cached).
      cached_compilations: how many of them were read from JAX's persistent compilation cache instead of
        compiled (``jax_compilation_cache_dir``; the command line's ``linfit.cli.compile_cache_dir``).
      run_seconds: ``wall_seconds - compile_seconds``, the work itself.
    """

    wall_seconds = cpu_seconds = compile_seconds = run_seconds = 0.0
    compilations = cached_compilations = 0

    def start(self) -> Stopwatch:
        self._compile0, self._count0, self._cached0 = _compile_clock()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def stop(self) -> Stopwatch:
        self.wall_seconds = time.perf_counter() - self._wall0
        self.cpu_seconds = time.process_time() - self._cpu0
        compile_seconds, count, cached = _compile_clock()
        self.compile_seconds = min(compile_seconds - self._compile0, self.wall_seconds)
        self.compilations = count - self._count0
        self.cached_compilations = cached - self._cached0
        self.run_seconds = self.wall_seconds - self.compile_seconds
        return self

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
