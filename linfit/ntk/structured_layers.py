"""Find the ``flax.linen`` Dense/Conv layers inside a pure function and read their NTK factors.

For one call of a Dense layer ``y = a W + b`` or a Conv layer ``y = conv(a, W) + b`` on one sample, the
gradient of output ``f_o`` with respect to the layer's parameters factorises (Deshpande et al. 2021,
Appendix A; Novak et al. 2022, "structured derivatives"):

    ∂f_o/∂W = Pᵀ G_o        [K, C],      ∂f_o/∂b = Σ_s G_o[s]        [C],

where ``P [S, K]`` holds what the kernel multiplies at each of the layer's ``S`` output positions (a Dense
on an input ``[..., K]``: the ``K``-vector at every leading index; a Conv: the ``K = k_1·…·k_n·C_in``
input patch under the window) and ``G_o [S, C] = ∂f_o/∂y`` is the output cotangent. A layer called
several times (weight sharing) stacks the positions of all its calls. A grouped convolution
(``feature_group_count = g``; depthwise when ``g = C_in``) factorises group by group: group ``j`` multiplies
the patch channels ``P_j [S, K/g]`` of its ``C_in/g`` input channels into its ``C/g`` output channels, so
``∂f_o/∂W_j = P_jᵀ G_{o,j}`` ``[K/g, C/g]`` (:func:`linfit.ntk.structured_contract.layer_gradient`).

Layers are found with :func:`flax.linen.intercept_methods`: every ``__call__`` of a module is seen with its
inputs, and the module is mapped to its parameter leaves by the *identity* of its kernel array in the
parameter tree handed to ``f`` (so ``f`` may select a sub-tree or nest the model in any way). The
interceptor records the input ``a`` and adds a zero perturbation ``eps`` to the output ``y``; the
Jacobian of ``f`` with respect to ``eps`` is ``G``. Only public ``jax``/``flax`` APIs are used.

A layer is *supported* when it is exactly ``nn.Dense`` or ``nn.Conv`` (subclasses that keep their
``__call__``), with the default ``dot_general``/``conv_general_dilated`` and ``promote_dtype``, no
``mask``, any ``feature_group_count``, 1 to 3 spatial dimensions and padding ``'SAME'``, ``'VALID'``,
``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'`` or explicit; strides, input and kernel dilation are
supported. A layer called inside a lifted transform (``nn.scan``, ``nn.vmap``, ``nn.remat``, ``nn.jit``, or a
``jax`` transform inside ``f``) runs at another trace level than ``f`` and is not supported.

The factorisation differentiates a leaf only through the layer's kernel/bias slots. So each leaf is also
checked structurally: ``f`` is traced with every supported call replaced by a stand-in that depends on the
call's input but not on the layer's parameters, and a leaf that the output still depends on (tied weights,
``x @ dense.variables["params"]["kernel"].T``, ``nn.Embed.attend``-style reuse) is *read directly*; the
caller differentiates such leaves by Jacobian contraction instead (see :func:`find_layers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype as _default_promote_dtype
from jax.extend.core import get_opaque_trace_state

from linfit.ntk._usage import unread_leaves
from linfit.ntk.patches import patches
from linfit.tree import path_str

Interceptor = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One call of a supported layer: the module (its settings) and the per-call shapes."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    out_dtype: Any


@dataclasses.dataclass(frozen=True)
class Layer:
    """A supported Dense/Conv layer: its key (the params path of its kernel's parent), its calls, and
    which of its leaves reach ``f`` only through those calls (``*_exact``: the factorisation is exact)."""

    key: str
    calls: tuple[LayerCall, ...]
    has_bias: bool
    kernel_exact: bool = True
    bias_exact: bool = True

    @property
    def kernel_path(self) -> str:
        return f"{self.key}/kernel" if self.key else "kernel"

    @property
    def bias_path(self) -> str:
        return f"{self.key}/bias" if self.key else "bias"

    @property
    def positions(self) -> int:
        """``S``: output positions summed over all calls."""
        return sum(int(np.prod(c.out_shape[:-1])) for c in self.calls)

    @property
    def groups(self) -> int:
        """``g``: the convolution's ``feature_group_count`` (1 for a Dense or an ordinary Conv)."""
        module = self.calls[0].module
        return int(module.feature_group_count) if isinstance(module, nn.Conv) else 1

    @property
    def features_in(self) -> int:
        """``K``: the length of what the kernel multiplies at one position, per group (all of it when ``g = 1``)."""
        call = self.calls[0]
        if isinstance(call.module, nn.Conv):
            return int(np.prod(_kernel_size(call.module))) * call.in_shape[-1] // self.groups
        return call.in_shape[-1]

    @property
    def features_out(self) -> int:
        """``C``: the layer's output features."""
        return self.calls[0].out_shape[-1]


def id_to_path(params: Any) -> dict[int, str]:
    """Map ``id(leaf)`` to the leaf's '/'-joined path, for the leaves of ``params`` (a traced tree)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {id(leaf): path_str(path) for path, leaf in flat}


def _own_param(module: nn.Module, name: str) -> Any:
    params = module.variables.get("params", {})
    return params.get(name) if hasattr(params, "get") else None


def owner_key(module: nn.Module, ids: dict[int, str]) -> str | None:
    """The params path owning ``module``'s kernel (``'a/b'`` for ``'a/b/kernel'``), or ``None``.

    ``None`` when ``module`` is not a Dense/Conv, or its kernel is not a leaf of the tree ``ids`` was
    built from (a lifted transform, a kernel computed inside ``f``), or its bias is not the sibling leaf.
    """
    if not isinstance(module, (nn.Dense, nn.Conv)):
        return None
    path = ids.get(id(_own_param(module, "kernel")))
    if path is None or not (path == "kernel" or path.endswith("/kernel")):
        return None
    key = path[: -len("kernel")].rstrip("/")
    bias = _own_param(module, "bias")
    if bias is not None and ids.get(id(bias)) != (f"{key}/bias" if key else "bias"):
        return None
    return key


def _as_tuple(value: None | int | Sequence[int], n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def _kernel_size(module: nn.Conv) -> tuple[int, ...]:
    k = module.kernel_size
    return (int(k),) if isinstance(k, int) else tuple(int(v) for v in k)


def _conv_padding(
    module: nn.Conv,
) -> tuple[list[tuple[int, int]] | None, str, str | list[tuple[int, int]]]:
    """``(pre_pads, pad_mode, lax_padding)`` reproducing ``nn.Conv``'s padding rules.

    ``pre_pads`` (spatial dims only) and ``pad_mode`` describe a ``jnp.pad`` applied before a
    ``'VALID'`` convolution ('CIRCULAR', 'REFLECT', 'CAUSAL'); otherwise ``pre_pads`` is ``None``.
    Raises ``ValueError`` for a padding it does not understand.
    """
    size = _kernel_size(module)
    n = len(size)
    dilation = _as_tuple(module.kernel_dilation, n)
    padding = module.padding
    if isinstance(padding, str):
        if padding in ("SAME", "VALID"):
            return None, "constant", padding
        dilated = [(k - 1) * d + 1 for k, d in zip(size, dilation)]
        if padding in ("CIRCULAR", "REFLECT"):
            mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding]
            return [((k - 1) // 2, k // 2) for k in dilated], mode, "VALID"
        if padding == "CAUSAL" and n == 1:
            return [(dilated[0] - 1, 0)], "constant", "VALID"
        raise ValueError(f"unsupported padding {padding!r}")
    if isinstance(padding, int):
        return None, "constant", [(padding, padding)] * n
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pairs) != n or any(len(p) != 2 for p in pairs):
        raise ValueError(f"unsupported padding {padding!r}")
    return None, "constant", [(int(lo), int(hi)) for lo, hi in pairs]


def conv_patches(module: nn.Conv, inputs: jax.Array) -> jax.Array:
    """Input patches of a Conv call, ``[B, *batch, *spatial, C_in] -> [B, S, K]``: ``S`` = prod(batch)·prod(output
    spatial), ``K`` = prod(kernel_size)·C_in in channel-major order (:func:`linfit.ntk.patches.patches`, after the
    module's own 'CIRCULAR', 'REFLECT' or 'CAUSAL' padding)."""
    size = _kernel_size(module)
    n = len(size)
    lead = inputs.shape[0]
    x = inputs.reshape((-1,) + inputs.shape[-(n + 1) :])
    pre_pads, pad_mode, padding = _conv_padding(module)
    if pre_pads is not None:
        x = jnp.pad(x, [(0, 0)] + pre_pads + [(0, 0)], mode=pad_mode)
    found = patches(x, size, _as_tuple(module.strides, n), padding, _as_tuple(module.input_dilation, n),
                    _as_tuple(module.kernel_dilation, n))
    return found.reshape(lead, -1, found.shape[-1])


def layer_inputs(layer: Layer, acts: Sequence[jax.Array]) -> jax.Array:
    """``P [N, S, K]``: the stacked kernel inputs of all calls; ``acts[c]`` is ``[N, *in_shape_c]``."""
    parts = []
    for call, a in zip(layer.calls, acts):
        if isinstance(call.module, nn.Conv):
            parts.append(conv_patches(call.module, a))
        else:
            parts.append(a.reshape(a.shape[0], -1, a.shape[-1]))
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def layer_cotangents(layer: Layer, cots: Sequence[jax.Array]) -> jax.Array:
    """``G [N, O, S, C]``: the stacked output cotangents of all calls; ``cots[c]`` is ``[N, O, *out_shape_c]``."""
    parts = [g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1]) for g in cots]
    return jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def is_supported(
    module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> bool:
    """Whether a call of ``module`` on ``in_shape`` is handled by the factorisation (module docstring)."""
    if (
        getattr(module, "promote_dtype", _default_promote_dtype)
        is not _default_promote_dtype
    ):
        return False
    if isinstance(module, nn.Dense):
        return (
            type(module).__call__ is nn.Dense.__call__
            and module.dot_general is None
            and module.dot_general_cls is None
        )
    if not isinstance(module, nn.Conv) or type(module).__call__ is not nn.Conv.__call__:
        return False
    n = len(_kernel_size(module))
    if (
        module.mask is not None
        or module.conv_general_dilated is not None
        or module.conv_general_dilated_cls is not None
        or not 1 <= n <= 3
        or len(in_shape) < n + 1
    ):
        return False
    try:
        patches = jax.eval_shape(
            lambda a: conv_patches(module, a),
            jax.ShapeDtypeStruct((1,) + tuple(in_shape), jnp.float32),
        )
    except (ValueError, TypeError):
        return False
    return patches.shape[1] == int(np.prod(out_shape[:-1]))


def _trace_state() -> Any:
    """An opaque token of the current JAX trace (equal tokens: same trace level); flax uses the same."""
    return get_opaque_trace_state(convention="flax")


def discovery_interceptor(ids: dict[int, str], record: list, level: Any) -> Interceptor:
    """An interceptor appending ``(key, LayerCall, supported)`` for every Dense/Conv call it can map.
    A call at another trace level than ``level`` (inside a lifted transform) is not supported."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        key = (
            owner_key(context.module, ids)
            if context.method_name == "__call__"
            else None
        )
        if key is not None:
            in_shape = tuple(jnp.shape(args[0])) if args else ()
            call = LayerCall(
                context.module, in_shape, tuple(jnp.shape(out)), jnp.result_type(out)
            )
            supported = (
                bool(args)
                and not kwargs
                and _trace_state() == level
                and is_supported(context.module, in_shape, call.out_shape)
            )
            record.append((key, call, supported))
        return out

    return interceptor


def find_layers(
    call_f: Callable[[Any], Any], params: Any
) -> tuple[dict[str, Layer], Any]:
    """Trace ``call_f(params)`` abstractly and list its supported Dense/Conv layers.

    Args:
      call_f: ``params -> output``; runs the model once (e.g. on one sample).
      params: the parameter tree handed to ``call_f``.

    Returns:
      ``(layers, out)``: ``layers`` maps a key to a :class:`Layer` for every Dense/Conv layer all of
      whose calls are supported, with ``kernel_exact``/``bias_exact`` false for a leaf that ``call_f``
      also reads outside the layer's calls; ``out`` is the output's ``ShapeDtypeStruct``.
    """
    record: list = []

    def traced(p):
        interceptor = discovery_interceptor(id_to_path(p), record, _trace_state())
        with nn.intercept_methods(interceptor):
            return call_f(p)

    out = jax.eval_shape(traced, params)
    calls: dict[str, list] = {}
    ok: dict[str, bool] = {}
    for key, call, supported in record:
        calls.setdefault(key, []).append(call)
        ok[key] = ok.get(key, True) and supported
    layers = {
        key: Layer(key, tuple(cs), has_bias=cs[0].module.use_bias)
        for key, cs in calls.items()
        if ok[key]
    }
    if not layers:
        return layers, out

    def bypassed(p):
        with nn.intercept_methods(_bypassing_interceptor(id_to_path(p), layers)):
            return call_f(p)

    unread = set(unread_leaves(bypassed, params))
    layers = {
        key: dataclasses.replace(
            layer,
            kernel_exact=layer.kernel_path in unread,
            bias_exact=not layer.has_bias or layer.bias_path in unread,
        )
        for key, layer in layers.items()
    }
    return layers, out


def _bypassing_interceptor(ids: dict[int, str], layers: dict[str, Layer]) -> Interceptor:
    """Replace each call of a layer in ``layers`` by a stand-in of the call's output shape and dtype that
    depends on the call's input but not on the layer's parameters (the module is not run, so its
    kernel and bias are not read): what still reads them reads them directly."""

    def interceptor(next_fun, args, kwargs, context):
        key = owner_key(context.module, ids) if context.method_name == "__call__" else None
        if key not in layers:
            return next_fun(*args, **kwargs)
        layer = layers[key]
        in_shape = tuple(jnp.shape(args[0]))
        call = next(c for c in layer.calls if c.in_shape == in_shape)
        return jnp.broadcast_to(jnp.sum(args[0]).astype(call.out_dtype), call.out_shape)

    return interceptor


def perturbing_interceptor(
    ids: dict[int, str], eps: dict[str, list], acts: dict[str, list]
) -> Interceptor:
    """An interceptor that, for each layer key in ``eps``, appends the call's input to ``acts[key]`` and
    returns ``y + eps[key][c]`` for the layer's ``c``-th call (``eps`` zero: the value is unchanged, the
    derivative with respect to ``eps`` is the output cotangent)."""

    def interceptor(next_fun, args, kwargs, context):
        key = (
            owner_key(context.module, ids)
            if context.method_name == "__call__"
            else None
        )
        if key is None or key not in eps:
            return next_fun(*args, **kwargs)
        calls = acts.setdefault(key, [])
        calls.append(args[0])
        return next_fun(*args, **kwargs) + eps[key][len(calls) - 1]

    return interceptor
