"""Multi-Krum (Blanchard et al., NeurIPS 2017) and Bulyan over Multi-Krum (El Mhamdi et al.,
ICML 2018), as in the code of El-Mhamdi, Guerraoui & Rouault (ICLR 2021).

Krum scores each vector by ``s_i = Σ_{j ∈ N_i} ‖g_i - g_j‖`` where ``N_i`` are its ``n - f - 1``
nearest other vectors, and averages the ``m`` best-scored vectors (ties: lower index first). The
paper's code uses Euclidean distances and ``m = n - f - 2``; ``m=1, squared=True`` is Blanchard et
al.'s original Krum. Needs ``n >= 2f + 3``.

Bulyan (paper's code): scores ``s_i`` as above but over the ``m`` (default ``n - f - 2``) nearest
others; with ``r_0, r_1, ...`` the rows by increasing score, it builds ``θ = n - 2f - 2`` vectors
``y_i = mean(g_{r_i} .. g_{r_{i+m_i-1}})``, ``m_i = min(m, n - f - 2 - i)`` (Multi-Krum repeated
on the remaining rows after removing the best one each time; the scores are not recomputed), then
per coordinate averages the ``β = θ - 2f`` values of ``y`` closest to their median. Needs
``n >= 4f + 3``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.coordinatewise import closest_to_median
from jaxbyz.aggregators.distance import pairwise_distances, rows_finite
from jaxbyz.aggregators.ops import mask_of, weighted_rows
from jaxbyz.aggregators.registry import register
from jaxbyz.validation import boolean, integer, reject_unknown

Array = jax.Array


def krum_scores(D: Array, k: int) -> Array:
    """``s_i``: sum of the ``k`` smallest distances from row ``i`` to the others (``D`` [n, n]).

    The ``k`` values come sorted (``top_k``), so equal multisets give bit-identical sums.
    """
    n = D.shape[0]
    off = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, D)
    return -jnp.sum(lax.top_k(-off, k)[0], axis=1)


def best_scored(scores: Array, m: int) -> Array:
    """Indices of the ``m`` smallest scores, ties broken by lower index (a stable sort)."""
    return jnp.argsort(scores, stable=True)[:m]


def _krum(
    G: Array, f: int, *, key: Any = None, prev: Any = None, m: int | None, squared: bool
) -> tuple[Array, Array]:
    n = G.shape[0]
    m = n - f - 2 if m is None else m
    D = pairwise_distances(G, squared)
    chosen = best_scored(krum_scores(D, n - f - 1), m)
    accepted = mask_of(chosen, n)
    return weighted_rows(accepted[None] / m, G, chosen, rows_finite(D))[0], accepted


def _krum_check(n: int, f: int, m: int | None = None, **_: Any) -> str | None:
    if n < 2 * f + 3:
        return "krum needs n >= 2f+3"
    if m is not None and m > n - f - 2:
        return f"krum needs m <= n-f-2 (m={m})"
    return None


def krum_bound(n: int, f: int, d: int, **_: Any) -> float | None:
    """``1/sqrt(2(n-f + f(n + f(n-f-2) - 2)/(n-2f-2)))`` (El-Mhamdi et al., ICLR 2021)."""
    if n - 2 * f - 2 <= 0:
        return None
    return 1.0 / math.sqrt(2 * (n - f + f * (n + f * (n - f - 2) - 2) / (n - 2 * f - 2)))


@register("krum", "multikrum", "multi-krum")
def krum(m: int | None = None, squared: bool = False, **unknown: Any) -> Rule:
    """Multi-Krum: average of the ``m`` (default ``n-f-2``) vectors of smallest Krum score.

    Args:
      m: number of best-scored vectors averaged (1 <= m <= n-f-2); None for ``n-f-2``.
      squared: score with squared distances (Blanchard et al.) instead of distances (paper code).
    """
    reject_unknown("krum", unknown, ("m", "squared"))
    m = integer("krum", "m", m, minimum=1, optional=True)
    squared = boolean("krum", "squared", squared)
    return Rule(
        name="krum",
        fn=_krum,
        params={"m": m, "squared": squared},
        check_fn=_krum_check,
        bound_fn=krum_bound,
        selects=True,
    )


@functools.cache
def bulyan_weights(theta: int, m: int, m_max: int) -> np.ndarray:
    """``A`` ``[θ, u]``: ``y = A @ g_{r_0..r_{u-1}}``, row ``i`` averaging ranks ``i..i+m_i-1``."""
    spans = [(i, min(m, m_max - i)) for i in range(theta)]
    used = max(i + mi for i, mi in spans)
    A = np.zeros((theta, used), np.float32)
    for i, mi in spans:
        A[i, i : i + mi] = 1.0 / mi
    return A


def suffix_means(G: Array, ranked: Array, theta: int) -> Array:
    """``y_i = mean(g_{r_i} .. g_{r_{u-1}})`` for ``i < θ`` (``u = len(ranked)``) as an
    ``[θ, d]`` matrix: suffix sums accumulated by a scan from the last rank, reading only the
    ranked rows (no gather copy)."""
    u = ranked.shape[0]

    def add(total: Array, index: Array) -> tuple[Array, Array]:
        total = total + G[index]
        return total, total

    zero = jnp.zeros(G.shape[1:], G.dtype)
    tail, _ = lax.scan(lambda t, i: (add(t, i)[0], None), zero, ranked[theta:][::-1])
    _, sums = lax.scan(add, tail, ranked[:theta][::-1])
    counts = jnp.arange(u, u - theta, -1, dtype=G.dtype)
    return sums[::-1] / counts[:, None]


def _bulyan(
    G: Array, f: int, *, key: Any = None, prev: Any = None, m: int | None, lower: bool
) -> tuple[Array, Array]:
    n = G.shape[0]
    m_max = n - f - 2
    m = m_max if m is None else m
    theta, beta = n - 2 * f - 2, n - 4 * f - 2
    D = pairwise_distances(G)
    order = jnp.argsort(krum_scores(D, m), stable=True)
    A = bulyan_weights(theta, m, m_max)
    used = order[: A.shape[1]]
    if m == m_max:  # y_i are suffix means: O(u d) adds instead of an O(θ u d) product
        Y = suffix_means(G, used, theta)
    else:
        W = jnp.zeros((theta, n), G.dtype).at[:, used].set(jnp.asarray(A))
        Y = weighted_rows(W, G, used, rows_finite(D))
    return closest_to_median(Y, beta, lower), mask_of(used, n)


def _bulyan_check(n: int, f: int, m: int | None = None, **_: Any) -> str | None:
    if n < 4 * f + 3:
        return "bulyan needs n >= 4f+3"
    if m is not None and m > n - f - 2:
        return f"bulyan needs m <= n-f-2 (m={m})"
    return None


@register("bulyan")
def bulyan(m: int | None = None, lower: bool = True, **unknown: Any) -> Rule:
    """Bulyan over Multi-Krum, as the paper's code (see the module docstring).

    Args:
      m: Multi-Krum's neighbourhood and averaging size (1 <= m <= n-f-2); None for ``n-f-2``.
      lower: median convention with an even count (True: lower middle value, as torch.median).
    """
    reject_unknown("bulyan", unknown, ("m", "lower"))
    m = integer("bulyan", "m", m, minimum=1, optional=True)
    lower = boolean("bulyan", "lower", lower)
    return Rule(
        name="bulyan",
        fn=_bulyan,
        params={"m": m, "lower": lower},
        check_fn=_bulyan_check,
        bound_fn=krum_bound,
        selects=True,
    )
