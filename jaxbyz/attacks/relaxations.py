"""Differentiable relaxations of the aggregation rules, for attacks optimised through the rule
(:mod:`jaxbyz.attacks.optimized`).

A rule with discrete choices (which rows it keeps) has a zero or uninformative gradient with
respect to the rows it rejects: the Byzantine rows get no signal telling them how to be kept. A
relaxation replaces each discrete choice by a smooth one, so that gradient ascent can follow it;
the attack still SCORES every candidate with the exact rule. :data:`RELAXATIONS` maps a rule
name to its relaxation ``relax(rule, G, f, *, key, temperature) -> [d]``, called with the key the
exact rule gets (common random numbers: DnC's coordinates and SignGuard's block are the same):

- ``krum`` (Multi-Krum, ``m`` rows): soft selection of the rows by their Krum scores ``s_i``
  (Blanchard et al., NeurIPS 2017; sums of the ``n - f - 1`` smallest distances, squared if the
  rule's ``squared``): for ``m = 1`` weights ``softmax(-s / T)``; for ``m > 1`` weights
  ``sigmoid((t - s_i) / T)`` with ``t`` the midpoint of the ``m``-th and ``(m+1)``-th smallest
  scores; the relaxed aggregate is the normalised weighted average of the rows. As ``T -> 0``
  both give the exact rule;
- ``bulyan``: the same soft selection of the rows Bulyan's Multi-Krum stage uses (its scores
  over ``m`` neighbours; the ``u`` best-ranked rows, ``u = n - f - 2`` by default), their soft
  weighted average: the coordinate-wise stage is dropped from the relaxation;
- ``brute`` (MDA): ``softmax(-diam / T)`` over all ``(n - f)``-subsets by their squared
  diameters, the aggregate ``sum_S p_S mean(G_S)``;
- ``smea``: the same mixture of subset means, ``softmax(-λ_max(Σ_S) / T)`` over the ``top``
  subsets of smallest ``λ_max`` (default 64, chosen by the exact eigenvalues, held constant; the
  others get weight 0, which they have at any small ``T``), each ``λ_max = uᵀ B_S u / k`` with its
  eigenvector ``u`` held constant (the derivative of a simple eigenvalue);
- ``trmean``: not a relaxation but the exact trimmed mean written so that its gradient is cheap:
  ``sum_i k_i g_i / (n - 2f)`` with ``k_i = [x_(f) <= g_i <= x_(n-f-1)]`` per coordinate, the two
  thresholds held constant. Its value and gradient are the exact rule's wherever no value ties
  a threshold (almost everywhere); autodiff of the rule itself goes back through the whole
  selection network (the optimized attack, 20 steps, h = 39, f = 12, d = 79,510 on the 2-core
  CPU: 4.4 s a call instead of 7.4 s, compile 12 s instead of 47 s; ``python
  benchmarks/attacks.py --optimized trmean --optimized-steps 20``);
- ``geomed``: one Weiszfeld step ``sum_i beta_i g_i / sum_i beta_i``, ``beta_i = 1 /
  max(nu, ||g_i - z*||)``, from the exact geometric median ``z*`` held constant
  (``stop_gradient``): its value is ``z*`` (a fixed point) and its Jacobian ``P_j / (r_j sum_i
  1/r_i)`` approximates the implicit one ``(sum_i P_i / r_i)^-1 P_j / r_j`` (``P_i`` the
  projector orthogonal to ``g_i - z*``); the exact rule's ``while_loop`` cannot be reverse-
  differentiated;
- ``cge``, ``aksel``, ``monna`` (means of the ``c`` rows of smallest key: squared norm, squared
  distance to the coordinate-wise median, squared distance to the pivot, ``prev`` taken as 0):
  the soft selection of the ``c`` smallest keys, their normalised weighted average;
- ``dnc``: in each iteration the soft membership ``sigmoid((t - s_i) / T)`` of the ``n - ⌊c f⌋``
  rows of smallest outlier score ``s_i = ((x_i - μ) · v)²``, the top singular direction ``v`` of
  the centred subsample held constant; the product of the memberships over the iterations (a
  soft intersection); the normalised weighted average of the rows;
- ``clustering``, ``clippedclustering``: the two exact average-linkage clusters (held
  constant), and each row's soft membership of the kept cluster ``K``, ``sigmoid((b_i - a_i) /
  T)``, ``a_i`` (``b_i``) its mean cosine distance to the other rows of ``K`` (of the other
  cluster); the normalised weighted average of the rows (clipped to the median norm for
  ``clippedclustering``). As ``T -> 0`` the weights are "closer on average to ``K``", which is the
  exact membership when the clusters are well separated (not always: agglomeration is greedy);
- ``signguard``: the soft norm filter ``sigmoid((ρ_i - L) / T) sigmoid((R - ρ_i) / T)``,
  ``ρ_i = ||g_i|| / med_j ||g_j||``, times the exact sign cluster (the sign statistics are
  piecewise constant: no gradient), the rows clipped to the median norm, normalised weighted
  average;
- ``caf``: the filter unrolled over its at most ``2f`` passes (a ``scan`` instead of the rule's
  ``while_loop``, which reverse-mode autodiff cannot differentiate), each pass's dominant
  direction held constant in the derivative and the choice of the returned pass held constant:
  its value is the exact rule's.

The temperature is relative: ``T = temperature * std(finite scores)`` (held constant). Rules
without a relaxation (``average``, ``median``, ``cclip``, ``phocas``, ``meamed``,
rules behind pre-aggregators, ...) are differentiated exactly by JAX autodiff (sorts and
selections are differentiable almost everywhere); where reverse-mode autodiff of the rule fails
at trace time (a ``while_loop``), :func:`straight_through` is used: the exact value with the
Jacobian of the weighted average of the rows the rule accepted (uniform when it reports none).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.brute import subsets
from jaxbyz.aggregators.clustering import (
    average_linkage_labels,
    clipping_radius,
    cosine_distances,
    largest_cluster,
)
from jaxbyz.aggregators.coordinatewise import coordinate_median
from jaxbyz.aggregators.distance import pairwise_sq_distances
from jaxbyz.aggregators.dnc import coordinate_subsets, dnc_scores
from jaxbyz.aggregators.krum import bulyan_weights, krum_scores
from jaxbyz.aggregators.ops import nan_to_inf
from jaxbyz.aggregators.order import NETWORK_MAX_ROWS, order_statistics
from jaxbyz.aggregators.signguard import median_norm, sign_cluster
from jaxbyz.aggregators.spectral import caf_pass, subset_top_eigenvalues
from jaxbyz.attacks.adaptive import call_rule
from jaxbyz.rows import HIGHEST, clip_factors, row_finite, row_norms

Array = jax.Array

# relax(rule, G, f, *, key, temperature) -> relaxed aggregate [d]
RelaxFn = Callable[..., Array]
SMEA_TOP = 64  # subsets kept in SMEA's relaxation


# ---------------------------------------------------------------------------------------------- #
# Soft choices


def _temperature(scores: Array, temperature: Any) -> tuple[Array, Array, Array]:
    """``(finite, s, T)``: the finite mask, the scores with 0 elsewhere, and ``T = temperature x
    std`` of the finite scores (1 x temperature when they are all equal), held constant."""
    finite = jnp.isfinite(scores)
    s = jnp.where(finite, scores, 0.0)
    count = jnp.maximum(jnp.sum(finite), 1)
    mean = jnp.sum(s) / count
    std = jnp.sqrt(jnp.sum(jnp.where(finite, jnp.square(s - mean), 0.0)) / count)
    scale = jnp.maximum(std, jnp.finfo(s.dtype).tiny)
    return finite, s, lax.stop_gradient(temperature * jnp.where(std > 0, scale, 1.0))


def soft_below(scores: Array, threshold: Any, temperature: Any) -> Array:
    """``[n]`` in ``[0, 1]``: ``sigmoid((threshold - s_i) / T)`` (``T`` as in
    :func:`_temperature`), the soft indicator of ``s_i < threshold``; 0 for non-finite scores."""
    finite, s, T = _temperature(scores, temperature)
    return jnp.where(finite, jax.nn.sigmoid((threshold - s) / T), 0.0)


def soft_membership(scores: Array, m: int, temperature: Any) -> Array:
    """``[n]`` in ``[0, 1]``: the soft indicator of being among the ``m`` smallest ``scores``,
    ``sigmoid((t - s_i) / T)``, ``t`` the midpoint of the ``m``-th and ``(m+1)``-th smallest
    (every finite score is in when ``m >= n``). Non-finite scores get 0."""
    n = scores.shape[0]
    finite = jnp.isfinite(scores)
    if m >= n:
        return finite.astype(scores.dtype)
    ordered = jnp.sort(jnp.where(finite, scores, jnp.inf))
    upper = ordered[m]
    t = 0.5 * (ordered[m - 1] + jnp.where(jnp.isfinite(upper), upper, ordered[m - 1]))
    return soft_below(scores, t, temperature)


def soft_selection(scores: Array, m: int, temperature: Any) -> Array:
    """``[n]`` weights summing to 1 that softly select the ``m`` smallest ``scores``.

    ``m = 1``: ``softmax(-s / T)``; ``m > 1``: :func:`soft_membership` normalised. Non-finite
    scores get weight 0.
    """
    if m == 1:
        finite, s, T = _temperature(scores, temperature)
        w = jax.nn.softmax(jnp.where(finite, -s / T, -jnp.inf))
        return jnp.where(finite, w, 0.0)
    return _normalised(soft_membership(scores, m, temperature))


def _normalised(w: Array) -> Array:
    return w / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)


# ---------------------------------------------------------------------------------------------- #
# The relaxations


def _safe_distances(G: Array, squared: bool) -> Array:
    """Pairwise distances with a finite gradient at 0 (the rule's own are ``sqrt`` of 0)."""
    D = pairwise_sq_distances(G)
    if squared:
        return D
    finite = jnp.isfinite(D)
    floor = 1e-12 * lax.stop_gradient(jnp.max(jnp.where(finite, D, 0.0))) + 1e-30
    return jnp.where(finite, jnp.sqrt(jnp.maximum(jnp.where(finite, D, 0.0), floor)), jnp.inf)


def _weighted_average(w: Array, G: Array) -> Array:
    """``sum_i w_i g_i`` over the rows with ``w_i > 0`` (a NaN row with weight 0 stays out)."""
    G = jnp.where((w > 0)[:, None], G, 0.0)
    return jnp.dot(w.astype(G.dtype), G, precision=HIGHEST)


def relaxed_krum(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft Multi-Krum: the rows weighted by a soft selection of the ``m`` best Krum scores."""
    n = G.shape[0]
    m = rule.params.get("m") or n - f - 2
    D = _safe_distances(G, rule.params.get("squared", False))
    return _weighted_average(soft_selection(krum_scores(D, n - f - 1), m, temperature), G)


def relaxed_bulyan(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft average of the rows Bulyan's Multi-Krum stage uses (coordinate stage dropped)."""
    n = G.shape[0]
    m_max = n - f - 2
    m = rule.params.get("m") or m_max
    used = bulyan_weights(n - 2 * f - 2, m, m_max).shape[1]
    D = _safe_distances(G, False)
    return _weighted_average(soft_selection(krum_scores(D, m), used, temperature), G)


def relaxed_brute(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft MDA: ``sum_S softmax(-diam_S / T) mean(G_S)`` over the ``(n - f)``-subsets."""
    n = G.shape[0]
    D = pairwise_sq_distances(G)
    candidates = jnp.asarray(subsets(n, n - f))
    diameters = jax.vmap(lambda idx: jnp.max(D[idx[:, None], idx[None, :]]))(candidates)
    return _subset_mixture(soft_selection(diameters, 1, temperature), candidates, G)


def relaxed_trmean(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """The trimmed mean as a masked mean between its two thresholds held constant (module doc)."""
    n = G.shape[0]
    S = order_statistics(nan_to_inf(G), (f, n - f - 1))
    low, high = lax.stop_gradient(S[f]), lax.stop_gradient(S[n - f - 1])

    def kept(X: Array) -> Array:
        Y = nan_to_inf(X)
        return jnp.where((Y >= low) & (Y <= high), X, 0.0)

    if n > NETWORK_MAX_ROWS:
        return jnp.sum(kept(G), axis=0) / (n - 2 * f)
    # row by row: the masked sum of the whole matrix was an order of magnitude slower on XLA
    # CPU at n = 51, d = 79,510 (measured once, on the 2-core VM)
    total = kept(G[0])
    for i in range(1, n):
        total = total + kept(G[i])
    return total / (n - 2 * f)


def relaxed_geomed(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """One Weiszfeld step from the exact geometric median held constant (see module doc)."""
    z = lax.stop_gradient(call_rule(rule, G, f, key))
    finite = row_finite(G)
    Gz = jnp.where(finite[:, None], G, 0.0)
    dist = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(Gz - z), axis=1), 1e-30))
    beta = jnp.where(finite, 1.0 / jnp.maximum(dist, rule.params.get("nu", 1e-6)), 0.0)
    return _weighted_average(beta / jnp.sum(beta), Gz)


def _soft_mean_of_smallest(G: Array, keys: Array, c: int, temperature: Any) -> Array:
    return _weighted_average(soft_selection(keys, c, temperature), G)


def relaxed_cge(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft CGE: the ``n - f`` rows of smallest squared norm, softly selected."""
    keys = jnp.sum(jnp.square(G), axis=1)
    return _soft_mean_of_smallest(G, keys, G.shape[0] - f, temperature)


def relaxed_aksel(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft Aksel: the rows closest to the coordinate-wise median, softly selected."""
    n = G.shape[0]
    c = (n + 1) // 2 if rule.params.get("mode", "mid") == "mid" else n - f
    med = coordinate_median(G, rule.params.get("lower", True))
    return _soft_mean_of_smallest(G, jnp.sum(jnp.square(G - med), axis=1), c, temperature)


def relaxed_monna(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft MoNNA: the ``n - f`` rows nearest to the pivot, softly selected (``prev`` = 0)."""
    pivot = rule.params.get("pivot", "median")
    if pivot == "median":
        p = coordinate_median(G)
    elif pivot == "prev":
        p = jnp.zeros(G.shape[1], G.dtype)
    else:
        p = G[pivot]
    keys = jnp.sum(jnp.square(G - p), axis=1)
    return _soft_mean_of_smallest(G, keys, G.shape[0] - f, temperature)


def _subset_mixture(p: Array, candidates: Array, G: Array) -> Array:
    """``sum_S p_S mean(G_S)`` over the subsets ``candidates`` ``[s, k]`` weighted by ``p``."""
    n, k = G.shape[0], candidates.shape[1]
    w = jnp.zeros((n,), G.dtype).at[candidates].add(jnp.broadcast_to(p[:, None], candidates.shape))
    return _weighted_average(w / k, G)


def relaxed_smea(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft SMEA: ``softmax(-λ_max / T)`` over the :data:`SMEA_TOP` subsets of smallest
    ``λ_max`` (chosen exactly, held constant), the mixture of their means."""
    n = G.shape[0]
    candidates = jnp.asarray(subsets(n, n - f))
    lam = lax.stop_gradient(subset_top_eigenvalues(G, candidates))
    top = lax.top_k(-lam, min(SMEA_TOP, candidates.shape[0]))[1]
    chosen = candidates[top]
    p = soft_selection(subset_top_eigenvalues(G, chosen, hold_direction=True), 1, temperature)
    return _subset_mixture(p, chosen, G)


def relaxed_dnc(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft DnC: the product over the iterations of the soft memberships of the kept rows."""
    n, d = G.shape
    params = rule.params
    kept = n - math.floor(params["c"] * f)
    finite = row_finite(G)

    def membership(r: Array) -> Array:
        scores = dnc_scores(jnp.take(G, r, axis=1), finite, hold_direction=True)
        return soft_membership(scores, kept, temperature)

    coordinates = coordinate_subsets(key, d, min(params["subsample"], d), params["niters"])
    w = jnp.prod(jax.vmap(membership)(coordinates), axis=0)
    return _weighted_average(_normalised(w), G)


def relaxed_clustering(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft membership of the exact kept cluster by mean cosine distances (module doc); the rows
    clipped to the median norm first for ``clippedclustering``."""
    finite = row_finite(G)
    norms = row_norms(G)
    D = cosine_distances(G, norms)
    K = lax.stop_gradient(largest_cluster(average_linkage_labels(lax.stop_gradient(D))))
    off = ~jnp.eye(G.shape[0], dtype=bool)

    def mean_distance(members: Array) -> Array:
        mask = (members[None, :] & off).astype(G.dtype)
        return jnp.sum(D * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    closer = jnp.where(finite, mean_distance(~K) - mean_distance(K), -jnp.inf)
    member = soft_below(-closer, 0.0, temperature)
    clip = jnp.ones_like(norms)
    if rule.name == "clippedclustering":
        clip = clip_factors(norms, clipping_radius(norms, finite, rule.params["max_tau"]))
    total = jnp.maximum(jnp.sum(member), jnp.finfo(G.dtype).tiny)
    return _weighted_average(member * clip / total, G)


def relaxed_signguard(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """Soft norm filter times the exact sign cluster, rows clipped to the median norm."""
    p = rule.params
    norms, M = median_norm(G)
    ratio = norms / M
    by_norm = soft_below(ratio, p["R"], temperature) * soft_below(-ratio, -p["L"], temperature)
    cluster = sign_cluster(G, key, p["fraction"], p["quantile"], p["bandwidth"], p["iters"])
    w = by_norm * lax.stop_gradient(cluster).astype(G.dtype)
    total = jnp.maximum(jnp.sum(w), jnp.finfo(G.dtype).tiny)
    return _weighted_average(w * clip_factors(norms, M) / total, G)


def relaxed_caf(rule: Any, G: Array, f: int, *, key: Any, temperature: Any) -> Array:
    """CAF unrolled over its at most ``2f`` passes (module doc): the exact value."""
    n = G.shape[0]
    finite = row_finite(G)
    X = jnp.where(finite[:, None], G, 0.0)
    c0 = finite.astype(X.dtype)
    mu0, spread0, c1, moved0 = caf_pass(X, c0, hold_direction=True)

    def step(state: tuple, _: Any) -> tuple[tuple, None]:
        c, going, best_spread, best_mu = state
        going = going & (jnp.sum(c) > n - 2 * f)
        mu, spread, c_next, moved = caf_pass(X, c, hold_direction=True)
        better = going & (lax.stop_gradient(spread) < best_spread)
        state = (
            jnp.where(going, c_next, c),
            going & moved,
            jnp.where(better, lax.stop_gradient(spread), best_spread),
            jnp.where(better, mu, best_mu),
        )
        return state, None

    start = (c1, moved0, lax.stop_gradient(spread0), mu0)
    (_, _, _, mu), _ = lax.scan(step, start, None, length=max(2 * f, 1) - 1)
    return mu


RELAXATIONS: dict[str, RelaxFn] = {
    "krum": relaxed_krum,
    "bulyan": relaxed_bulyan,
    "brute": relaxed_brute,
    "smea": relaxed_smea,
    "trmean": relaxed_trmean,
    "geomed": relaxed_geomed,
    "cge": relaxed_cge,
    "aksel": relaxed_aksel,
    "monna": relaxed_monna,
    "dnc": relaxed_dnc,
    "clustering": relaxed_clustering,
    "clippedclustering": relaxed_clustering,
    "signguard": relaxed_signguard,
    "caf": relaxed_caf,
}


def straight_through(rule: Any, G: Array, f: int, key: Any) -> Array:
    """The exact aggregate, with the Jacobian of the average of the rows the rule accepted."""
    if getattr(rule, "needs_key", False):
        value, accepted = rule.aggregate(G, f, key=key)
    else:
        value, accepted = rule.aggregate(G, f)
    n = G.shape[0]
    w = jnp.full((n,), 1.0 / n, G.dtype) if accepted is None else accepted.astype(G.dtype)
    w = lax.stop_gradient(w / jnp.maximum(jnp.sum(w), jnp.finfo(G.dtype).tiny))
    surrogate = _weighted_average(w, G)
    return lax.stop_gradient(value) + surrogate - lax.stop_gradient(surrogate)
