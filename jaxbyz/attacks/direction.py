"""Base for attacks that send ``mu + factor * direction`` (the paper's ``identical.py`` family).

Every Byzantine worker sends the same vector ``byz = mu + s x v`` where ``mu`` is the
coordinate-wise mean of the honest submissions, ``v = direction(H, f, key, **extra)`` an attack
direction ``[d]``, ``s = -1`` when ``negative`` else ``+1``, and ``x`` the factor:

- ``factor >= 0`` (a number, or a traced array at call time): a fixed factor;
- ``factor = -K``, a negative integer (the paper's spelling; default ``-16``), or
  ``factor="adaptive"`` (``K = 16``): ``x >= 0`` maximises ``||GAR(H ∪ byz(x)) - mu||²`` with
  ``K`` rule evaluations, spent by the vectorised search of :mod:`jaxbyz.attacks.adaptive`
  in ``stages`` rounds of ``vmap``-ed evaluations;
- ``factor="auto"`` where the attack defines one (``little``: Baruch et al.'s ``z_max``).

The rule is evaluated as ``rule(concat(H, f copies of byz), f_decl)``: ``f`` real Byzantine
workers, the declared count ``f_decl`` given to the rule.

A custom direction attack::

    def away(H, f, key):              # [d]: push against the first honest worker
        return -H[0]

    atk = direction_attack("away", away, factor="adaptive")
    byz = atk(H, f, key=key, rule=aggregators.get("krum"))

Paper: El-Mhamdi, Guerraoui & Rouault, "Distributed Momentum for Byzantine-resilient
Stochastic Gradient Descent", ICLR 2021 (attacks/identical.py of LPD-EPFL/ByzantineMomentum).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks import adaptive
from jaxbyz.attacks.base import Attack
from jaxbyz.rows import broadcast_row, row_mean
from jaxbyz.validation import boolean, integer, is_array

Array = jax.Array

# direction(H, f, key, **extra) -> [d]
DirectionFn = Callable[..., Array]
# auto_factor(n, f_decl) -> float, the factor of factor="auto"
AutoFn = Callable[[int, int], float]

DEFAULT_STAGES = 4


def parse_factor(attack: str, factor: Any, *, has_auto: bool = False) -> tuple[str, Any]:
    """``("fixed", x)``, ``("adaptive", evals)`` or ``("auto", None)`` from a ``factor`` value."""
    if is_array(factor):
        return "fixed", factor
    if isinstance(factor, str):
        word = factor.strip().lower()
        if word == "adaptive":
            return "adaptive", adaptive.DEFAULT_EVALS
        if word == "auto" and has_auto:
            return "auto", None
        choices = "a number >= 0, a negative integer -K (adaptive, K evaluations), 'adaptive'"
        raise ValueError(
            f"attack {attack}: unknown factor mode {factor!r}; use {choices}"
            + (", or 'auto'" if has_auto else "")
        )
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise ValueError(f"attack {attack}: factor must be a number or a mode, got {factor!r}")
    if not math.isfinite(factor):
        raise ValueError(f"attack {attack}: factor must be finite, got {factor!r}")
    if factor >= 0:
        return "fixed", float(factor)
    if float(factor).is_integer():
        return "adaptive", int(-factor)
    raise ValueError(
        f"attack {attack}: factor={factor!r} is negative but not an integer; a negative factor "
        f"-K means 'search the factor with K rule evaluations' (the paper's spelling); for the "
        f"vector mu - {-factor} * direction pass factor={-factor}, negative=True"
    )


def direction_attack(
    name: str,
    direction: DirectionFn,
    *,
    factor: Any = -adaptive.DEFAULT_EVALS,
    negative: bool = False,
    stages: int = DEFAULT_STAGES,
    needs_key: bool = False,
    auto_factor: AutoFn | None = None,
    **extra: Any,
) -> Attack:
    """An :class:`Attack` sending ``mu + s x direction(H, f, key, **extra)`` (see module doc).

    ``extra`` are static keyword parameters of ``direction`` (validated by the caller).
    """
    mode, _ = parse_factor(name, factor, has_auto=auto_factor is not None)
    negative = boolean(f"attack {name}", "negative", negative, allow_array=True)
    stages = integer(f"attack {name}", "stages", stages, minimum=1)
    fn = functools.partial(_attack_fn, name, direction, auto_factor)
    params = {"factor": factor, "negative": negative, "stages": stages, **extra}
    return Attack(
        name=name, fn=fn, params=params, needs_key=needs_key, needs_rule=mode == "adaptive"
    )


def _attack_fn(
    name: str,
    direction: DirectionFn,
    auto_factor: AutoFn | None,
    H: Array,
    f: int,
    *,
    key: Array | None,
    rule: Any,
    f_decl: int,
    factor: Any,
    negative: Any,
    stages: int,
    **extra: Any,
) -> Array:
    if f == 0:
        return jnp.zeros((0, H.shape[1]), H.dtype)
    key_dir, key_rule = (None, None) if key is None else jax.random.split(key)
    mu = row_mean(H)
    v = direction(H, f, key_dir, **extra)
    sign = jnp.where(negative, -1.0, 1.0).astype(H.dtype)
    x = choose_factor(
        name, factor, H=H, mu=mu, origin=mu, direction=sign * v, f=f, f_decl=f_decl, rule=rule,
        key=key_rule, stages=stages, auto_factor=auto_factor,
    )  # fmt: skip
    return broadcast_row(mu + (sign * x).astype(H.dtype) * v, f)


def choose_factor(
    name: str,
    factor: Any,
    *,
    H: Array,
    mu: Array,
    origin: Array,
    direction: Array,
    f: int,
    f_decl: int,
    rule: Any,
    key: Array | None,
    stages: int,
    auto_factor: AutoFn | None = None,
) -> Array:
    """The factor ``x`` for the vector ``origin + x direction``: fixed, auto, or searched."""
    mode, value = parse_factor(name, factor, has_auto=auto_factor is not None)
    if mode == "fixed":
        return jnp.asarray(value, H.dtype)
    if mode == "auto":
        return jnp.asarray(auto_factor(H.shape[0] + f, f_decl), H.dtype)
    if rule is None:
        raise ValueError(f"attack {name} searches its factor: pass rule=aggregators.get(...)")
    objective = adaptive.deviation_objective(H, mu, origin, direction, f, f_decl, rule, key)
    return adaptive.maximize(objective, value, stages)[0]
