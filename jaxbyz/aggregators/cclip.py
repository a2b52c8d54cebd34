"""Centred clipping (Karimireddy, He & Jaggi, ICML 2021, "Learning from History for
Byzantine Robust Optimization").

From the previous aggregate ``v_0 = prev``, ``L`` times:
``v_{l+1} = v_l + (1/n) Σ_i (g_i - v_l) · min(1, τ / ‖g_i - v_l‖)``.
Each row moves the centre by at most ``τ/n``; a row holding a non-finite value contributes
nothing (its clipped direction is undefined). Norms are computed without overflow, so a finite
row of huge values (1e30) is clipped like any other.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import row_finite, row_norms, row_weighted_sum
from jaxbyz.validation import integer, number, reject_unknown

Array = jax.Array


def centred_clip(G: Array, prev: Array, tau: float, iterations: int) -> Array:
    """``L = iterations`` centred-clipping steps from ``prev`` with radius ``tau``."""
    n = G.shape[0]
    finite = row_finite(G)
    G = jnp.where(finite[:, None], G, 0.0)
    v = jnp.where(jnp.isfinite(prev), prev, 0.0).astype(G.dtype)
    for _ in range(iterations):
        norms = row_norms(G - v)
        w = jnp.where(finite, jnp.minimum(1.0, tau / jnp.maximum(norms, 1e-30)), 0.0) / n
        v = v + row_weighted_sum(w, G) - jnp.sum(w) * v
    return v


def _cclip(
    G: Array, f: int, *, key: Any = None, prev: Array, tau: float, L: int
) -> tuple[Array, None]:
    return centred_clip(G, prev, tau, L), None


@register("cclip", "cc", "centered-clipping")
def cclip(tau: float = 10.0, L: int = 1, **unknown: Any) -> Rule:
    """Centred clipping around the previous aggregate (``prev``; zeros at the first step).

    Args:
      tau: clipping radius ``τ > 0``.
      L: number of clipping iterations (>= 1).
    """
    reject_unknown("cclip", unknown, ("tau", "L"))
    tau = number("cclip", "tau", tau, above=0)
    L = integer("cclip", "L", L, minimum=1)
    return Rule(name="cclip", fn=_cclip, params={"tau": tau, "L": L}, needs_prev=True)
