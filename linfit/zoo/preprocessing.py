"""How a zoo model's input images are prepared: size, channels, channel order and normalisation.

Every linfit dataset holds images ``[N, H, W, C]`` float32 in ``[0, 1]`` with ``C = 1`` (grayscale) or ``C = 3``
(RGB) at their own resolution; each zoo model declares the :class:`Preprocessing` its weights were trained with,
and :meth:`Preprocessing.prepare` turns the task's images into that model's inputs on whatever device JAX has.
It is linfit's one input convention: the architectures' declarations (``linfit.models.preprocessing``), the
ImageNet zoo, TOML zoos and the embedded zoo all use it, with mean and std in pixel / 255 units.

1. channels: grayscale -> RGB by repeating the channel; RGB -> grayscale by ITU-R 601-2 luma
   ``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``convert("L")``);
2. channel order: ``"BGR"`` reverses the three channels;
3. size: bilinear resize to ``input_size x input_size`` with an antialiasing kernel when shrinking
   (``jax.image.resize(..., "linear", antialias=True)``, the same weights as Pillow's ``Image.BILINEAR``);
4. normalisation: ``x[..., c] = (pixel[..., c] - mean[c]) / std[c]`` with ``pixel`` in ``[0, 1]``.

Example::

    >>> pre = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB")   # torchvision
    >>> pre.prepare(np.zeros((4, 28, 28, 1), np.float32)).shape
    (4, 224, 224, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from linfit.errors import ConfigError, ShapeError

CHANNEL_ORDERS = ("RGB", "BGR", "L")
"""``"RGB"``, ``"BGR"`` (three channels) or ``"L"`` (one grayscale channel)."""
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A model's input convention: ``x[..., c] = (pixel[..., c] - mean[c]) / std[c]`` at ``input_size``.

    Attributes:
      input_size: side of the square input in pixels (inputs ``[N, input_size, input_size, channels]``).
      mean, std: one value per input channel, in the model's channel order, in units of pixel / 255 (pixels in
        ``[0, 1]``); ``std > 0``.
      channel_order: one of :data:`CHANNEL_ORDERS`.

    Raises:
      ConfigError: a size below 1, an unknown channel order, mean/std of the wrong length, or a std that is not
        a positive finite number.
    """

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 1:
            raise ConfigError(f"input_size must be a positive integer (pixels); got {self.input_size!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}; got {self.channel_order!r}")
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise ConfigError(f"{key} needs {self.channels} value(s) for channel_order {self.channel_order!r} "
                                  f"(one per channel); got {list(values)}")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"mean must be finite and std positive and finite; got mean {list(self.mean)}, "
                              f"std {list(self.std)}")

    @property
    def channels(self) -> int:
        """The model's input channels: 1 for ``"L"``, else 3."""
        return 1 if self.channel_order == "L" else 3

    def prepare(self, images, *, batch_size: int = 256) -> np.ndarray:
        """The model's inputs for dataset images.

        Args:
          images: ``[N, H, W, C]`` float32 in ``[0, 1]``, ``C`` 1 (grayscale) or 3 (RGB).
          batch_size: images per jitted call (one compilation per input shape and convention).

        Returns:
          ``[N, input_size, input_size, channels]`` float32 on the host. Images already in the model's form
          (same size and channels, RGB or grayscale order, mean 0, std 1) are returned unchanged.

        Raises:
          ShapeError: ``images`` is not ``[N, H, W, 1 or 3]``.
        """
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ShapeError(f"images must be [N, H, W, C] with C = 1 (grayscale) or 3 (RGB); got {images.shape}")
        if (images.shape[1:] == (self.input_size, self.input_size, self.channels) and self.channel_order != "BGR"
                and set(self.mean) == {0.0} and set(self.std) == {1.0}):
            return images
        fn = functools.partial(_prepare, size=self.input_size, order=self.channel_order)
        mean, std = np.float32(self.mean), np.float32(self.std)
        out = [np.asarray(fn(jnp.asarray(images[i:i + batch_size]), mean, std))
               for i in range(0, images.shape[0], batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.input_size, self.input_size, self.channels),
                                                        np.float32)


@functools.partial(jax.jit, static_argnames=("size", "order"))
def _prepare(x: jax.Array, mean: jax.Array, std: jax.Array, *, size: int, order: str) -> jax.Array:
    """``[B, H, W, C]`` in [0, 1] -> ``[B, size, size, channels]`` (module docstring, steps 1-4)."""
    if order == "L" and x.shape[-1] == 3:
        x = x @ jnp.asarray(_LUMA, x.dtype)[:, None]
    elif order != "L" and x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if order == "BGR":
        x = x[..., ::-1]
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear", antialias=True)
    return (x - mean) / std
