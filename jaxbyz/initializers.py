"""Initialisation overrides: the paper's ``--init-multi NAME --init-multi-args k:v ...`` (for
tensors of 2 or more dimensions: kernels) and ``--init-mono NAME --init-mono-args ...`` (for the
others: biases, BatchNorm scales and offsets), with ``torch.nn.init``'s names and semantics.

:func:`reinitialize` redraws the parameters with the
``torch.nn.init`` function of that name (without its trailing underscore), with torch's arguments
and defaults; :func:`check_initializer` validates a (name, args) pair without drawing anything,
:func:`initializer_names` lists them:

- ``uniform(a=0, b=1)``: U(a, b); ``normal(mean=0, std=1)``: N(mean, std^2);
- ``trunc_normal(mean=0, std=1, a=-2, b=2)``: N(mean, std^2) restricted to [a, b] (absolute bounds);
- ``constant(val)``, ``ones()``, ``zeros()``;
- ``xavier_uniform(gain=1)``: U(-g sqrt(6 / (fan_in + fan_out)), +...); ``xavier_normal(gain=1)``:
  N(0, g^2 * 2 / (fan_in + fan_out));
- ``kaiming_uniform(a=0, mode='fan_in', nonlinearity='leaky_relu')``: U(-g sqrt(3 / fan), +...) and
  ``kaiming_normal(...)``: N(0, g^2 / fan), with g = ``calculate_gain(nonlinearity, a)``, fan the
  fan-in or the fan-out per ``mode``;
- ``orthogonal(gain=1)``: a uniformly random (semi-)orthogonal matrix times ``gain``, the tensor
  seen as a matrix [outputs, everything else];
- ``eye()``: identity (2-dimensional tensors only); ``dirac(groups=1)``: identity convolution
  (3- to 5-dimensional tensors only); ``sparse(sparsity, std=0.01)``: N(0, std^2) with a fraction
  ``sparsity`` of each input's weights set to zero (2-dimensional tensors only).

In the simulator these redraw the model's parameters once, at initialisation
(:meth:`jaxbyz.simulator.Simulation.init`), after the models' own (PyTorch-like) defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["calculate_gain", "check_initializer", "initializer_names", "reinitialize"]


# ---------------------------------------------------------------------------------------------- #
# Initialisation overrides (torch.nn.init)
#
# Layouts. torch stores a Linear weight as [out, in] and a ConvNd weight as [out, in, *kernel];
# its fans are fan_in = size(1) * prod(size(2:)) and fan_out = size(0) * prod(size(2:)). Flax
# stores a Dense kernel as [in, out] and a Conv kernel as [*kernel, in, out]: the same numbers are
# fan_in = shape[-2] * prod(shape[:-2]) and fan_out = shape[-1] * prod(shape[:-2]), which is what
# jax.nn.initializers.variance_scaling computes with its defaults in_axis=-2, out_axis=-1. The
# shape-dependent initialisers (orthogonal, eye, dirac, sparse) are transposed the same way: the
# "output" axis is torch's first axis and Flax's last. (A user module whose kernel does not follow
# Flax's [..., in, out] convention, e.g. an nn.Embed table, gets its fans from that convention.)

_REQUIRED = object()

_LINEAR_GAINS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
_NONLINEARITIES = (*_LINEAR_GAINS, "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch.nn.init.calculate_gain: the recommended gain for ``nonlinearity``."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope!r} is not a valid number")
        return math.sqrt(2.0 / (1.0 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}; choose one of {_NONLINEARITIES}")


@dataclasses.dataclass(frozen=True)
class _Init:
    """One torch.nn.init function: its arguments (defaults), the dimensions it supports, a draw."""

    defaults: dict[str, Any]
    min_ndim: int
    max_ndim: int | None
    dims: str  # the dimensions torch supports, in words, for the error messages
    draw: Callable[..., jax.Array]  # (key, shape, dtype, **args) -> array
    check: Callable[[Callable[[str, str], ValueError], dict[str, Any]], None] | None = None


def _number(error, args, key, *, minimum=None, maximum=None) -> None:
    value = args[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        if minimum is not None and maximum is not None:
            bounds = f" in [{minimum}, {maximum}]"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        else:
            bounds = ""
        raise error(key, f"pass a finite number{bounds}")


def _check_uniform(error, args) -> None:
    _number(error, args, "a")
    _number(error, args, "b")
    if args["a"] > args["b"]:
        raise error("b", f"torch's uniform needs a <= b, got a={args['a']!r}")


def _check_normal(error, args) -> None:
    _number(error, args, "mean")
    _number(error, args, "std", minimum=0)


def _check_trunc_normal(error, args) -> None:
    _check_normal(error, args)
    _number(error, args, "a")
    _number(error, args, "b")
    if args["a"] > args["b"]:
        raise error("b", f"the truncation interval needs a <= b, got a={args['a']!r}")


def _check_gain(error, args) -> None:
    _number(error, args, "gain", minimum=0)


def _check_kaiming(error, args) -> None:
    _number(error, args, "a")
    mode = args["mode"]
    if not isinstance(mode, str) or mode.lower() not in ("fan_in", "fan_out"):
        raise error("mode", "choose fan_in or fan_out")
    if args["nonlinearity"] not in _NONLINEARITIES:
        raise error("nonlinearity", f"choose one of {', '.join(_NONLINEARITIES)}")


def _check_dirac(error, args) -> None:
    groups = args["groups"]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise error("groups", "pass a positive integer")


def _check_sparse(error, args) -> None:
    _number(error, args, "sparsity", minimum=0, maximum=1)
    _number(error, args, "std", minimum=0)


def _uniform(key, shape, dtype, a, b):
    return jax.random.uniform(key, shape, dtype, a, b)


def _normal(key, shape, dtype, mean, std):
    return mean + std * jax.random.normal(key, shape, dtype)


def _trunc_normal(key, shape, dtype, mean, std, a, b):
    # torch: N(mean, std^2) conditioned on [a, b] (absolute bounds), clamped to [a, b]
    if std == 0:
        return jnp.clip(jnp.full(shape, mean, dtype), a, b)
    z = jax.random.truncated_normal(key, (a - mean) / std, (b - mean) / std, shape, dtype)
    return jnp.clip(mean + std * z, a, b).astype(dtype)


def _constant(key, shape, dtype, val):
    return jnp.full(shape, val, dtype)


def _variance_scaling(mode: str, distribution: str, gain: float):
    # Var = gain^2 / fan (kaiming: fan per mode; xavier: fan_avg = (fan_in + fan_out) / 2, i.e.
    # gain^2 * 2 / (fan_in + fan_out)); "uniform" draws U(-sqrt(3 Var), sqrt(3 Var)) and "normal"
    # the untruncated N(0, Var), as torch does. Fans: see the layout note above.
    return jax.nn.initializers.variance_scaling(
        gain**2, mode, distribution, in_axis=-2, out_axis=-1
    )


def _xavier(distribution: str):
    def draw(key, shape, dtype, gain):
        return _variance_scaling("fan_avg", distribution, gain)(key, shape, dtype)

    return draw


def _kaiming(distribution: str):
    def draw(key, shape, dtype, a, mode, nonlinearity):
        if 0 in shape:  # torch: "Initializing zero-element tensors is a no-op"
            return jnp.zeros(shape, dtype)
        gain = calculate_gain(nonlinearity, a)
        return _variance_scaling(mode.lower(), distribution, gain)(key, shape, dtype)

    return draw


def _orthogonal(key, shape, dtype, gain):
    # torch flattens [out, in, *kernel] to a matrix [out, in * prod(kernel)] and makes its rows
    # (or columns, if taller than wide) orthonormal, via the QR decomposition of a Gaussian matrix
    # with the signs of diag(R) folded in. jax's orthogonal with column_axis=-1 flattens Flax's
    # [*kernel, in, out] to [prod(kernel) * in, out]: the transpose of torch's matrix up to an
    # order of its rows, so the same (semi-)orthogonality and the same (Haar) distribution.
    if 0 in shape:
        return jnp.zeros(shape, dtype)
    return jax.nn.initializers.orthogonal(scale=gain, column_axis=-1)(key, shape, dtype)


def _eye(key, shape, dtype):
    # torch: eye(out, in) on its [out, in] layout; Flax's [in, out] is its transpose, eye(in, out)
    return jnp.eye(shape[0], shape[1], dtype=dtype)


def _dirac(key, shape, dtype, groups):
    # torch, on [out, in, *kernel]: w[g * (out // groups) + d, d, *centre] = 1 for each group g and
    # d < min(out // groups, in), zero elsewhere; Flax's [*kernel, in, out] swaps the axes.
    *kernel, fan_in, out = shape
    per_group = out // groups
    centre = tuple(size // 2 for size in kernel)
    weight = np.zeros(shape, np.float32)
    for group in range(groups):
        for d in range(min(per_group, fan_in)):
            weight[(*centre, d, group * per_group + d)] = 1.0
    return jnp.asarray(weight, dtype)


def _sparse(key, shape, dtype, sparsity, std):
    # torch, on [rows=out, cols=in]: N(0, std^2), then in each column (one input) ceil(sparsity *
    # rows) entries at random rows set to zero. Flax's [in, out]: the same in each row.
    out = shape[1]
    k_value, k_zeros = jax.random.split(key)
    weight = std * jax.random.normal(k_value, shape, dtype)
    zeros = math.ceil(sparsity * out)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_zeros, shape), axis=1), axis=1)
    return jnp.where(ranks < zeros, jnp.zeros((), dtype), weight)


_ANY = "tensors of any dimension"
_MULTI = "tensors of 2 or more dimensions"
_INITS: dict[str, _Init] = {
    "uniform": _Init({"a": 0.0, "b": 1.0}, 0, None, _ANY, _uniform, _check_uniform),
    "normal": _Init({"mean": 0.0, "std": 1.0}, 0, None, _ANY, _normal, _check_normal),
    "trunc_normal": _Init(
        {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0},
        0,
        None,
        _ANY,
        _trunc_normal,
        _check_trunc_normal,
    ),
    "constant": _Init(
        {"val": _REQUIRED}, 0, None, _ANY, _constant, lambda e, a: _number(e, a, "val")
    ),
    "ones": _Init({}, 0, None, _ANY, lambda key, shape, dtype: jnp.ones(shape, dtype)),
    "zeros": _Init({}, 0, None, _ANY, lambda key, shape, dtype: jnp.zeros(shape, dtype)),
    "eye": _Init({}, 2, 2, "2-dimensional tensors (matrices)", _eye),
    "dirac": _Init(
        {"groups": 1},
        3,
        5,
        "tensors of 3, 4 or 5 dimensions (convolution kernels)",
        _dirac,
        _check_dirac,
    ),
    "xavier_uniform": _Init({"gain": 1.0}, 2, None, _MULTI, _xavier("uniform"), _check_gain),
    "xavier_normal": _Init({"gain": 1.0}, 2, None, _MULTI, _xavier("normal"), _check_gain),
    "kaiming_uniform": _Init(
        {"a": 0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
        2,
        None,
        _MULTI,
        _kaiming("uniform"),
        _check_kaiming,
    ),
    "kaiming_normal": _Init(
        {"a": 0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
        2,
        None,
        _MULTI,
        _kaiming("normal"),
        _check_kaiming,
    ),
    "orthogonal": _Init(
        {"gain": 1.0}, 2, None, _MULTI, _orthogonal, lambda e, a: _number(e, a, "gain")
    ),
    "sparse": _Init(
        {"sparsity": _REQUIRED, "std": 0.01},
        2,
        2,
        "2-dimensional tensors (matrices)",
        _sparse,
        _check_sparse,
    ),
}


def initializer_names() -> list[str]:
    """The torch.nn.init function names (without the trailing underscore) that are supported."""
    return sorted(_INITS)


def _normalize(name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("-", "_")
    return key[:-1] if key.endswith("_") else key


def check_initializer(
    flag: str,
    name: str,
    args: Mapping[str, Any] | None = None,
    mono: bool = False,
    shapes: Iterable[tuple[int, ...]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Validate initialiser ``name`` with ``args`` for ``flag`` without drawing anything.

    ``flag`` names the option in the messages (``--init-multi`` or ``--init-mono``); ``mono``
    says the initialiser is for the 1-dimensional parameters. ``shapes``, if given, are the
    shapes of the parameters it will draw (for the shape-restricted eye, dirac and sparse).
    Returns the canonical name and the complete arguments (torch's defaults filled in); raises a
    one-line ValueError naming the flag, the value and the fix.
    """
    key = _normalize(name)
    if key not in _INITS:
        raise ValueError(
            f"{flag} {name!r} is unknown; known initialisers (torch.nn.init names): "
            + ", ".join(initializer_names())
        )
    spec = _INITS[key]
    if mono and spec.min_ndim >= 2:
        raise ValueError(
            f"{flag} {key}: torch defines it only for {spec.dims}; {flag} draws the "
            "1-dimensional parameters (biases, BatchNorm scales and offsets)"
        )
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ValueError(f"{flag}-args for {key} must be key:value pairs, got {args!r}")
    unknown = [k for k in args if k not in spec.defaults]
    if unknown:
        accepted = ", ".join(spec.defaults) or "none"
        raise ValueError(
            f"{flag}-args: {key} takes no argument {', '.join(map(str, unknown))}; "
            f"accepted: {accepted}"
        )
    full = {**spec.defaults, **args}
    missing = [k for k, v in full.items() if v is _REQUIRED]
    if missing:
        raise ValueError(
            f"{flag} {key} needs " + " ".join(f"{k}:VALUE" for k in missing) + f" in {flag}-args"
        )

    def error(arg: str, fix: str) -> ValueError:
        return ValueError(f"{flag}-args: {key} {arg}={full[arg]!r} is invalid; {fix}")

    if spec.check is not None:
        spec.check(error, full)
    for shape in shapes or ():
        _check_shape(flag, key, spec, full, tuple(shape), "")
    return key, full


def _check_shape(flag: str, key: str, spec: _Init, args: dict, shape: tuple, where: str) -> None:
    ndim = len(shape)
    if ndim < spec.min_ndim or (spec.max_ndim is not None and ndim > spec.max_ndim):
        raise ValueError(
            f"{flag} {key}: torch defines it only for {spec.dims}; parameter {where}has shape "
            f"{shape}"
        )
    if key == "dirac" and shape[-1] % args["groups"]:
        raise ValueError(
            f"{flag} dirac: the {shape[-1]} output channels of parameter {where}(shape {shape}) "
            f"are not divisible by groups={args['groups']}"
        )


def _spec(flag: str, init: Any, mono: bool) -> tuple[str, str, dict[str, Any]] | None:
    if init is None:
        return None
    if isinstance(init, str):
        name, args = init, None
    else:
        name, args = init
    if name is None:
        return None
    key, full = check_initializer(flag, name, args, mono=mono)
    return flag, key, full


def _path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def reinitialize(
    params: Any,
    key: jax.Array,
    multi: tuple[str, Mapping[str, Any] | None] | str | None = None,
    mono: tuple[str, Mapping[str, Any] | None] | str | None = None,
) -> Any:
    """Redraw ``params`` (the ``"params"`` collection) with torch.nn.init initialisers.

    Every leaf of 2 or more dimensions (kernels) is drawn by ``multi`` and every other leaf
    (biases, BatchNorm scales and offsets) by ``mono``, as the paper's ``--init-multi`` and
    ``--init-mono`` do; each is ``(name, args)`` (or a bare name), or None to keep those leaves.
    Leaf ``i`` (in tree order) draws from ``jax.random.split(key, n_leaves)[i]``, so the kernels'
    values do not depend on ``mono`` nor the biases' on ``multi``. Shapes an initialiser does not
    support (eye on a convolution kernel, dirac on a dense kernel, ...) raise ValueError.
    """
    chosen_multi = _spec("--init-multi", multi, mono=False)
    chosen_mono = _spec("--init-mono", mono, mono=True)
    if chosen_multi is None and chosen_mono is None:
        return params
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    drawn = []
    for (path, leaf), leaf_key in zip(leaves, keys, strict=False):
        shape = tuple(jnp.shape(leaf))
        chosen = chosen_multi if len(shape) >= 2 else chosen_mono
        if chosen is None:
            drawn.append(leaf)
            continue
        flag, name, args = chosen
        spec = _INITS[name]
        _check_shape(flag, name, spec, args, shape, f"{_path(path)} ")
        drawn.append(spec.draw(leaf_key, shape, jnp.result_type(leaf), **args))
    return jax.tree_util.tree_unflatten(treedef, drawn)
