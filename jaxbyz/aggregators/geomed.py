"""Geometric median by the smoothed Weiszfeld algorithm (RFA; Pillutla, Kakade & Harchaoui, 2022).

``z* = argmin_z Σ_i ‖g_i - z‖``, approached from the coordinate-wise median ``z_0`` by
``z_{t+1} = Σ_i β_i g_i / Σ_i β_i`` with ``β_i = 1 / max(ν, ‖g_i - z_t‖)`` (``ν`` smooths the
objective near the data points). Stops after ``max_iter`` steps or once
``‖z_{t+1} - z_t‖ <= tol · mean_i ‖g_i - z_t‖`` (scale- and translation-invariant). Rows holding
a non-finite value are at infinite distance: weight 0. Needs ``n >= 2f + 1`` (breakdown 1/2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.coordinatewise import coordinate_median
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import row_finite, row_weighted_sum
from jaxbyz.validation import integer, number, reject_unknown

Array = jax.Array


def weiszfeld_step(G: Array, finite: Array, z: Array, nu: float) -> tuple[Array, Array]:
    """One smoothed Weiszfeld step from ``z``: ``(z', mean distance to z)``.

    ``G`` must have its non-finite rows zeroed and flagged False in ``finite``.
    """
    dist = jnp.sqrt(jnp.sum(jnp.square(G - z), axis=1))
    beta = jnp.where(finite, 1.0 / jnp.maximum(dist, nu), 0.0)
    z_new = row_weighted_sum(beta / jnp.sum(beta), G)
    spread = jnp.sum(jnp.where(finite, dist, 0.0)) / jnp.maximum(jnp.sum(finite), 1)
    return z_new, spread


def geometric_median(G: Array, nu: float, max_iter: int, tol: float) -> Array:
    """Smoothed Weiszfeld from the coordinate-wise median (see the module docstring)."""
    finite = row_finite(G)
    z0 = coordinate_median(G)
    G = jnp.where(finite[:, None], G, 0.0)

    def cond(state: tuple) -> Array:
        _, t, done = state
        return (t < max_iter) & ~done

    def body(state: tuple) -> tuple:
        z, t, _ = state
        z_new, spread = weiszfeld_step(G, finite, z, nu)
        done = jnp.sqrt(jnp.sum(jnp.square(z_new - z))) <= tol * spread
        return z_new, t + 1, done

    z, _, _ = lax.while_loop(cond, body, (z0, jnp.asarray(0), jnp.asarray(False)))
    return z


def _geomed(
    G: Array, f: int, *, key: Any = None, prev: Any = None, nu: float, max_iter: int, tol: float
) -> tuple[Array, None]:
    return geometric_median(G, nu, max_iter, tol), None


def _geomed_check(n: int, f: int, **_: Any) -> str | None:
    return "geomed needs n >= 2f+1" if n < 2 * f + 1 else None


@register("geomed", "gm", "rfa")
def geomed(nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6, **unknown: Any) -> Rule:
    """Geometric median (smoothed Weiszfeld).

    Args:
      nu: smoothing ``ν > 0``: distances below it count as ``ν``.
      max_iter: maximum number of Weiszfeld steps (>= 1).
      tol: stop when a step moves less than ``tol`` times the mean distance (0: run max_iter).
    """
    reject_unknown("geomed", unknown, ("nu", "max_iter", "tol"))
    nu = number("geomed", "nu", nu, above=0)
    max_iter = integer("geomed", "max_iter", max_iter, minimum=1)
    tol = number("geomed", "tol", tol, minimum=0)
    return Rule(
        name="geomed",
        fn=_geomed,
        params={"nu": nu, "max_iter": max_iter, "tol": tol},
        check_fn=_geomed_check,
    )
