"""Two-cluster agglomerative filtering on cosine distance: ``clustering`` and
``clippedclustering``.

- ``clustering`` (after Sattler, Müller, Wiegand & Samek, ICASSP 2020, "On the Byzantine
  Robustness of Clustered Federated Learning", as Blades' ``Clustering``): the rows are split
  into two clusters by agglomerative clustering on the cosine distance
  ``δ_ij = 1 - ⟨g_i, g_j⟩ / (‖g_i‖ ‖g_j‖)`` with average linkage (UPGMA); the aggregate is the
  mean of the larger cluster. Blades' ``Clustering`` uses complete linkage; we use average
  linkage for both rules.
- ``clippedclustering`` (Li, Xie, Xie, Cao, Li & Xu, IEEE Trans. Big Data 2023, "An
  Experimental Study of Byzantine-Robust Aggregation Schemes in Federated Learning"; Blades'
  ``Clippedclustering``): every row of norm above ``τ = min(med_i ‖g_i‖, max_tau)`` is
  scaled to norm ``τ``; then the same two-cluster split (clipping does not change cosine
  distances) and the mean of the clipped rows of the larger cluster. Blades takes the median
  over the norms of *all rounds so far* (its aggregator keeps a history); a jaxbyz rule only
  carries the previous aggregate, so the median is the current round's (``np.median``: the
  mean of the two middle norms for even ``n``). ``max_tau = 1e5`` as in Blades.

Agglomeration (checked against lishenghui/blades ``clippedclustering.py``: 2 clusters, average
linkage on ``1 - cos``, distance 2 where the cosine is undefined, the cluster of more than
``⌊n/2⌋`` members; and against ``scipy.cluster.hierarchy.linkage(method="average")``): start
from ``n`` singletons; ``n - 2`` times merge the two active clusters ``A, B`` of smallest
distance (ties: the lexicographically smallest pair of cluster ids) and set
``δ(A ∪ B, C) = (|A| δ(A, C) + |B| δ(B, C)) / (|A| + |B|)``. A cluster's id is its smallest
row index. The larger of the two final clusters is kept; on equal sizes (even ``n``), the one
of smaller id, i.e. holding the smaller row index (Blades keeps sklearn's label 0 then).
(Earlier Blades versions passed the cosine *similarity* to sklearn as a precomputed distance;
we follow the current one.)

Undefined directions: a row with a non-finite value or of norm 0 has distance 2 (the maximum)
to every other row, as in Blades (NaN distances set to 2). Norms are computed without overflow
(rows of 1e30 have their direction). A non-finite row is never averaged (accepted 0) even when
it falls in the kept cluster; the kept cluster has at least ``⌈n/2⌉ > f`` rows, so with at most
``f`` non-finite rows the aggregate is finite (``clustering`` averages finite rows of huge
values unclipped: 1e30 rows give an aggregate of order 1e30 / n).

Needs ``n >= 2`` and ``n >= 2f + 1``. Cost: an ``n x n x d`` Gram product of the normalised
rows, then ``n - 2`` sequential merges of ``O(n²)`` each.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import HIGHEST, clip_factors, row_finite, row_norms, row_weighted_sum
from jaxbyz.validation import number, reject_unknown

Array = jax.Array
MAX_TAU = 1e5


def cosine_distances(G: Array, norms: Array | None = None) -> Array:
    """``[n, n]``: ``1 - cos(g_i, g_j)`` clipped to ``[0, 2]``; 2 where a row is non-finite or
    zero; 0 on the diagonal. ``norms``: the rows' norms when already computed."""
    n = G.shape[0]
    norms = row_norms(G) if norms is None else norms
    ok = row_finite(G) & (norms > 0) & jnp.isfinite(norms)
    U = jnp.where(ok[:, None], G / jnp.where(ok, norms, 1.0)[:, None], 0.0)
    D = jnp.clip(1.0 - jnp.dot(U, U.T, precision=HIGHEST), 0.0, 2.0)
    D = jnp.where(ok[:, None] & ok[None, :], 0.5 * (D + D.T), 2.0)
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, D)


def average_linkage_labels(D: Array, clusters: int = 2) -> Array:
    """``[n]`` int32 cluster ids (smallest member index) after average-linkage agglomeration of
    the distance matrix ``D`` ``[n, n]`` down to ``clusters`` clusters (see module docstring)."""
    n = D.shape[0]
    eye = jnp.eye(n, dtype=bool)

    def merge(_: Array, state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        dist, size, label = state
        flat = jnp.argmin(dist)  # row-major: the first minimum has i < j (symmetric)
        i, j = flat // n, flat % n
        si, sj = size[i], size[j]
        row = (si * dist[i] + sj * dist[j]) / (si + sj)
        dist = dist.at[i, :].set(row).at[:, i].set(row)
        dist = dist.at[j, :].set(jnp.inf).at[:, j].set(jnp.inf)
        dist = jnp.where(eye, jnp.inf, dist)
        size = size.at[i].add(sj).at[j].set(0.0)
        label = jnp.where(label == j, i, label)
        return dist, size, label

    state = (
        jnp.where(eye, jnp.inf, D),
        jnp.ones((n,), D.dtype),
        jnp.arange(n, dtype=jnp.int32),
    )
    _, _, label = lax.fori_loop(0, max(n - clusters, 0), merge, state)
    return label


def largest_cluster(label: Array) -> Array:
    """``[n]`` bool: the rows of the most populated id (ties: the smaller id)."""
    n = label.shape[0]
    counts = jnp.zeros((n,), jnp.int32).at[label].add(1)
    return label == jnp.argmax(counts)


def _mean_of(G: Array, weights: Array, accepted: Array) -> Array:
    """``Σ_i weights_i g_i / Σ_i accepted_i`` over the accepted rows (others never read)."""
    total = jnp.maximum(jnp.sum(accepted), 1).astype(G.dtype)
    return row_weighted_sum(weights / total, jnp.where(accepted[:, None], G, 0.0))


def _clustering(G: Array, f: int, *, key: Any = None, prev: Any = None) -> tuple[Array, Array]:
    accepted = largest_cluster(average_linkage_labels(cosine_distances(G))) & row_finite(G)
    weights = accepted.astype(G.dtype)
    return _mean_of(G, weights, accepted), accepted.astype(jnp.float32)


def median_of(values: Array) -> Array:
    """``np.median``: the middle value, or the mean of the two middle values for even counts."""
    n = values.shape[0]
    s = jnp.sort(values)
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def clipping_radius(norms: Array, finite: Array, max_tau: float) -> Array:
    """``τ = min(med_i ‖g_i‖, max_tau)`` over the finite rows (``clippedclustering``)."""
    return jnp.minimum(median_of(jnp.where(finite, norms, jnp.inf)), max_tau)


def _clippedclustering(
    G: Array, f: int, *, key: Any = None, prev: Any = None, max_tau: float
) -> tuple[Array, Array]:
    finite = row_finite(G)
    norms = row_norms(G)
    factor = clip_factors(norms, clipping_radius(norms, finite, max_tau))
    accepted = largest_cluster(average_linkage_labels(cosine_distances(G, norms))) & finite
    weights = jnp.where(accepted, factor, 0.0).astype(G.dtype)
    return _mean_of(G, weights, accepted), accepted.astype(jnp.float32)


def _check(name: str) -> Any:
    def check(n: int, f: int, **_: Any) -> str | None:
        if n < 2 or n < 2 * f + 1:
            return f"{name} needs n >= 2 and n >= 2f+1"
        return None

    return check


@register("clustering")
def clustering(**unknown: Any) -> Rule:
    """Mean of the larger of two average-linkage clusters on cosine distance."""
    reject_unknown("clustering", unknown, ())
    return Rule(name="clustering", fn=_clustering, check_fn=_check("clustering"), selects=True)


@register("clippedclustering", "clipped-clustering")
def clippedclustering(max_tau: float = MAX_TAU, **unknown: Any) -> Rule:
    """Rows clipped to the median norm (at most ``max_tau``), then the mean of the clipped rows
    of the larger of two average-linkage clusters on cosine distance.

    Args:
      max_tau: upper bound ``> 0`` on the clipping threshold (Blades: 1e5).
    """
    reject_unknown("clippedclustering", unknown, ("max_tau",))
    max_tau = number("clippedclustering", "max_tau", max_tau, above=0)
    return Rule(
        name="clippedclustering",
        fn=_clippedclustering,
        params={"max_tau": max_tau},
        check_fn=_check("clippedclustering"),
        selects=True,
    )
