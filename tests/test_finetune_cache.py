"""The compiled-function cache of linfit.finetune: a warm run retraces nothing and gives exactly what a run
compiled from scratch gives (so no parameter, statistic or learning rate is baked into the compiled code), and
configs that shape the computation differently never share functions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linfit.finetune import FinetuneConfig, finetune, select_learning_rate
from linfit.finetune.loop import clear_compile_cache, compiled_functions

TRACES = {"count": 0}


class CountingNet(nn.Module):
    """Dense -> BatchNorm -> tanh -> head; every call (i.e. every trace under jit) bumps ``TRACES``."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        TRACES["count"] += 1
        h = jnp.tanh(nn.BatchNorm(momentum=0.9)(nn.Dense(5)(x), use_running_average=not train))
        return nn.Dense(self.num_classes, name="head")(h)


def _data(seed, n=16, d=4, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, np.arange(n) % c


def _variables(seed, d=4):
    return CountingNet().init(jax.random.PRNGKey(seed), jnp.zeros((1, d)))


CFG = FinetuneConfig(epochs=2, batch_size=8, learning_rate=0.05, milestones=(1,))
X, Y = _data(0)
X_TEST, Y_TEST = _data(1, n=10)


def _run(variables, config=CFG):
    return finetune(CountingNet(), variables, X, Y, config=config, x_test=X_TEST, y_test=Y_TEST)


def _fresh(variables, config=CFG):
    clear_compile_cache()
    return _run(variables, config)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    np.testing.assert_array_equal(a.test_loss, b.test_loss)
    for la, lb in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


def test_warm_run_does_not_retrace_and_equals_an_uncached_run():
    var_a, var_b = _variables(0), _variables(1)
    clear_compile_cache()
    TRACES["count"] = 0
    run_a = _run(var_a)
    first = TRACES["count"]
    assert first > 0
    run_b = _run(var_b, CFG.replace(learning_rate=0.02, seed=3, epochs=3, milestones=(2,)))
    assert TRACES["count"] == first, "the second run with the same architecture and shapes retraced"
    step = compiled_functions(CountingNet(), CFG).step
    assert step._cache_size() == 1  # one batch shape (16 = 2 x 8 rows)

    fresh_b = _fresh(var_b, CFG.replace(learning_rate=0.02, seed=3, epochs=3, milestones=(2,)))
    _assert_same(run_b, fresh_b)
    fresh_a = _fresh(var_a)
    _assert_same(run_a, fresh_a)
    # The runs really started from different variables (nothing of run A was compiled in).
    assert not np.array_equal(run_a.train_loss[:2], run_b.train_loss[:2])


def test_learning_rates_of_a_search_share_one_compilation():
    var = _variables(2)
    traces = []
    for lrs in [(0.05,), (0.05, 0.02, 0.01)]:
        clear_compile_cache()
        TRACES["count"] = 0
        search = select_learning_rate(CountingNet(), var, X, Y, config=CFG, lrs=lrs, x_test=X_TEST, y_test=Y_TEST)
        traces.append(TRACES["count"])
    assert traces[0] == traces[1]
    # Different step sizes really reached the compiled step.
    assert len(set(search.test_accuracy.tolist()) | {float(r.train_loss[-1]) for r in search.runs}) > 1


def _head_only(path, leaf):
    return path.startswith("head/")


SHAPING = [
    {"mode": "linear_probe"},
    {"mode": "subset", "params_filter": _head_only},
    {"mode": "subset", "params_filter": "^Dense_0/"},
    {"mode": "linearized"},
    {"bn": "frozen"},
    {"loss": "mse"},
    {"weight_decay": 0.1},
    {"weight_decay_center": "init"},
    {"momentum": 0.5},
    {"nesterov": False},
]


def test_configs_that_shape_the_computation_do_not_collide():
    clear_compile_cache()
    configs = [CFG] + [CFG.replace(**other) for other in SHAPING]
    functions = [compiled_functions(CountingNet(), c) for c in configs]
    assert len({id(f) for f in functions}) == len(configs)
    assert all(compiled_functions(CountingNet(), c) is f for c, f in zip(configs, functions, strict=True))


@pytest.mark.parametrize("other", [{"mode": "linearized"}, {"mode": "subset", "params_filter": _head_only}],
                         ids=["linearized", "callable-filter"])
def test_a_warm_cache_of_another_config_gives_the_uncached_result(other):
    var = _variables(3)
    config = CFG.replace(**other)
    clear_compile_cache()
    _run(var)  # the base config warms the cache first
    _assert_same(_run(var, config), _fresh(var, config))


def test_runtime_fields_share_and_architectures_do_not():
    base = compiled_functions(CountingNet(), CFG)
    assert compiled_functions(CountingNet(), CFG.replace(epochs=7, batch_size=3, seed=9, head_init="zeros")) is base
    assert compiled_functions(CountingNet(num_classes=4), CFG) is not base
    # linear_probe's default filter is the head: an explicit "^head/" means the same computation.
    probe = CFG.replace(mode="linear_probe")
    assert compiled_functions(CountingNet(), probe) is compiled_functions(CountingNet(), probe.replace(
        params_filter="^head/"))


def test_unhashable_filter_falls_back_to_compiling_afresh():
    config = CFG.replace(mode="subset", params_filter=["^head/", "BatchNorm"])
    assert compiled_functions(CountingNet(), config) is not compiled_functions(CountingNet(), config)
    var = _variables(4)
    _assert_same(_run(var, config), _fresh(var, config.replace(params_filter=("^head/", "BatchNorm"))))
