"""Time the structured NTK's convolution patches: strided slices (``linfit``) against ``lax.conv_general_dilated_patches``.

The structured NTK (:mod:`linfit.ntk.structured`) reads every convolution's input patches ``P [N, S, K]``.
``lax.conv_general_dilated_patches`` builds them with an identity convolution, ``S·K²`` multiply-adds per sample;
:func:`linfit.ntk.patches.patches` (behind ``structured_layers.conv_patches`` and the per-sample kernel gradients of
:mod:`linfit.ntk.vjp_rules`) copies one strided slice per kernel offset, ``S·K`` copies.
Both give the same array bit for bit (checked here on every row). Rows: the 3x3 convolutions of the embedded
zoo's resnet8 at the default scoring subset (N = 200, 28x28), and 3x3 and 1x1 convolutions of
EfficientNet-Lite0 / MobileNetV2 at 224 px (N = 16). Each program is compiled first, then the two alternate
``--repeats`` times; reported: the median wall time of each and the ratio baseline / linfit.

Usage::

    JAX_PLATFORMS=cpu python benchmarks/conv_patches.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from jax import lax

from linfit.ntk.structured_layers import conv_patches

# (label, N, H = W, C_in, kernel, stride)
ROWS = (
    ("resnet8 layer1 3x3", 200, 28, 16, 3, 1),
    ("resnet8 layer2 3x3 s2", 200, 28, 16, 3, 2),
    ("resnet8 layer3 3x3", 200, 7, 64, 3, 1),
    ("lite0 stem 3x3 s2", 16, 224, 3, 3, 2),
    ("lite0 1x1 expand", 16, 56, 24, 1, 1),
    ("lite0 1x1 project", 16, 14, 480, 1, 1),
    ("mobilenetv2 last 1x1", 16, 7, 320, 1, 1),
)


def baseline(module: nn.Conv, x: jax.Array) -> jax.Array:
    """The patches by ``lax.conv_general_dilated_patches`` (SAME padding, channel-major), ``[N, S, K]``."""
    patches = lax.conv_general_dilated_patches(
        x, filter_shape=module.kernel_size, window_strides=(module.strides,) * 2, padding="SAME",
        dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=lax.Precision.HIGHEST)
    return patches.reshape(x.shape[0], -1, patches.shape[-1])


def seconds(fn, x) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, median of {args.repeats}")
    print("| convolution | N | input | kernel | conv_general_dilated_patches (s) | linfit slices (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, n, size, channels, kernel, stride in ROWS:
        module = nn.Conv(8, (kernel, kernel), strides=stride, padding="SAME")
        x = jax.random.normal(jax.random.PRNGKey(0), (n, size, size, channels))
        ours, theirs = jax.jit(lambda a: conv_patches(module, a)), jax.jit(lambda a: baseline(module, a))
        np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(theirs(x)))  # compiles both
        samples_ours, samples_theirs = [], []
        for _ in range(args.repeats):  # alternate, so that a change of machine load hits both
            samples_theirs.append(seconds(theirs, x))
            samples_ours.append(seconds(ours, x))
        t_ours, t_theirs = statistics.median(samples_ours), statistics.median(samples_theirs)
        print(f"| {label} | {n} | {size}x{size}x{channels} | {kernel}x{kernel}/{stride} | {t_theirs:.4f} | "
              f"{t_ours:.4f} | {t_theirs / t_ours:.2f} |", flush=True)


if __name__ == "__main__":
    main()
