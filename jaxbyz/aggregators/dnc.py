"""Divide-and-Conquer (DnC; Shejwalkar & Houmansadr, NDSS 2021, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", its DnC algorithm).

``niters`` times, with ``r_t`` a set of ``b = min(subsample, d)`` coordinates drawn without
replacement (:func:`coordinate_subsets`):

- ``X = G[:, r_t]``, ``μ = (1/n) Σ_i X_i``, ``C = X - μ`` (rows ``c_i``);
- ``v`` the top right singular vector of ``C``; scores ``s_i = (c_i · v)²``;
- ``K_t`` = the ``n - ⌊c f⌋`` rows of smallest score (ties: lower index kept).

The kept set is ``K = ∩_t K_t``; the aggregate is the mean of the kept rows over all ``d``
coordinates, and ``accepted`` is the indicator of ``K``. The scores are computed on the centred
subsample, as in the paper's algorithm and in the DnC of JianXu95/SignGuard (``s = ((g_r - μ)
· v)²``); the authors' repository vrt1shjwlkr/NDSS21-Model-Poisoning publishes the attacks only,
not DnC. Blades (lishenghui/blades, ``Dnc``) takes the *union* of the ``K_t``; we follow the
paper's intersection.

Computation: ``(C v)² = λ u²`` with ``(λ, u)`` the top eigenpair of the ``n x n`` Gram matrix
``C Cᵀ`` (``C v = σ u``, ``σ² = λ``): one Gram product at ``Precision.HIGHEST`` and an ``eigh``,
exact up to rounding. The subsample is divided by its largest finite magnitude first (the
ranking is scale-invariant), so rows of huge values (1e30) do not overflow the Gram matrix.

Non-finite rows (any NaN/±Inf coordinate, anywhere in the row) are left out of ``μ`` and of the
Gram matrix, score ``+Inf`` (so they fill the removed places first) and are never kept, even
when ``⌊c f⌋`` is smaller than their number. Two fallbacks keep the output defined: if the
intersection is empty (possible only when ``niters ⌊c f⌋ >= n``) the first iteration's kept set
is used, and if no finite row is kept the aggregate is the zero vector.

Needs ``n - ⌊c f⌋ >= 1``. Cost per iteration: a gather of ``n x b`` values, an ``n x n x b``
Gram product and an ``n x n`` eigendecomposition; the draw of ``r_t`` permutes ``d`` indices.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import HIGHEST, row_finite, row_weighted_sum
from jaxbyz.validation import integer, number, reject_unknown

Array = jax.Array


def coordinate_subsets(key: Array, d: int, b: int, niters: int) -> Array:
    """``[niters, b]`` int32: the coordinates of each iteration, drawn without replacement.

    Iteration ``t`` uses ``jax.random.choice(k_t, d, (b,), replace=False)`` with
    ``k_t = jax.random.split(key, niters)[t]``; when ``b == d`` every iteration uses all the
    coordinates in order (the scores do not depend on the order, so nothing is drawn).
    """
    if b >= d:
        return jnp.broadcast_to(jnp.arange(d, dtype=jnp.int32), (niters, d))
    keys = jax.random.split(key, niters)
    draw = jax.vmap(lambda k: jax.random.choice(k, d, (b,), replace=False))
    return draw(keys).astype(jnp.int32)


def dnc_scores(X: Array, finite: Array, hold_direction: bool = False) -> Array:
    """``s_i = ((x_i - μ) · v)²`` up to a common positive factor; ``+Inf`` for rows not finite.

    ``X`` ``[n, b]`` (non-finite rows may hold anything); ``μ`` and ``v`` come from the finite
    rows only. ``hold_direction``: ``v`` (and the scale) held constant under differentiation,
    the scores ``(c_i · Cᵀu)²`` (``λ²u_i²``: the same ranking), for a relaxation's gradient.
    """
    X = jnp.where(finite[:, None], X, 0.0)
    scale = jnp.max(jnp.abs(X))
    scale = lax.stop_gradient(scale) if hold_direction else scale
    X = X / jnp.where(scale > 0, scale, 1.0)
    count = jnp.maximum(jnp.sum(finite), 1).astype(X.dtype)
    mu = row_weighted_sum(finite.astype(X.dtype), X) / count
    C = jnp.where(finite[:, None], X - mu, 0.0)
    K = jnp.dot(C, C.T, precision=HIGHEST)
    if hold_direction:
        u = jnp.linalg.eigh(lax.stop_gradient(K))[1][:, -1]
        v = lax.stop_gradient(jnp.dot(u, C, precision=HIGHEST))  # Cᵀu: the top direction
        scores = jnp.square(jnp.dot(C, v, precision=HIGHEST))
    else:
        eigenvalues, eigenvectors = jnp.linalg.eigh(K)
        scores = jnp.maximum(eigenvalues[-1], 0.0) * jnp.square(eigenvectors[:, -1])
    return jnp.where(finite, scores, jnp.inf)


def kept_rows(scores: Array, removed: int) -> Array:
    """``[n]`` bool: all rows but the ``removed`` of largest score (ties: lower index kept)."""
    n = scores.shape[0]
    order = jnp.argsort(scores, stable=True)
    return jnp.zeros((n,), bool).at[order[: n - removed]].set(True)


def _dnc(
    G: Array,
    f: int,
    *,
    key: Array,
    prev: Any = None,
    niters: int,
    c: float,
    subsample: int,
) -> tuple[Array, Array]:
    d = G.shape[1]
    removed = math.floor(c * f)
    finite = row_finite(G)
    subsets = coordinate_subsets(key, d, min(subsample, d), niters)
    scores = jax.vmap(lambda r: dnc_scores(jnp.take(G, r, axis=1), finite))(subsets)
    kept = jax.vmap(lambda s: kept_rows(s, removed))(scores)  # [niters, n]
    both = jnp.all(kept, axis=0)
    accepted = jnp.where(jnp.any(both), both, kept[0]) & finite
    weights = accepted.astype(G.dtype) / jnp.maximum(jnp.sum(accepted), 1).astype(G.dtype)
    aggregate = row_weighted_sum(weights, jnp.where(accepted[:, None], G, 0.0))
    return aggregate, accepted.astype(jnp.float32)


def _dnc_check(n: int, f: int, c: float = 1.0, **_: Any) -> str | None:
    if n - math.floor(c * f) < 1:
        return f"dnc needs n - floor(c*f) >= 1 (c={c})"
    return None


@register("dnc", "divide-and-conquer")
def dnc(niters: int = 1, c: float = 1.0, subsample: int = 10000, **unknown: Any) -> Rule:
    """Divide-and-Conquer: drop the ``⌊c f⌋`` rows most aligned with the top singular direction
    of a random coordinate subsample, ``niters`` times; average the rows kept every time.

    Args:
      niters: number of subsamples (>= 1); the kept set is the intersection over them.
      c: filtering fraction ``c >= 0``: ``⌊c f⌋`` rows are removed per iteration.
      subsample: number ``b`` of coordinates per subsample (>= 1), capped at ``d``.
    """
    reject_unknown("dnc", unknown, ("niters", "c", "subsample"))
    niters = integer("dnc", "niters", niters, minimum=1)
    c = number("dnc", "c", c, minimum=0)
    subsample = integer("dnc", "subsample", subsample, minimum=1)
    return Rule(
        name="dnc",
        fn=_dnc,
        params={"niters": niters, "c": c, "subsample": subsample},
        check_fn=_dnc_check,
        selects=True,
        needs_key=True,
    )
