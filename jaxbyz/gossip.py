"""One communication round of decentralized Byzantine learning: pure, jittable JAX.

Every honest node ``i`` (a *recipient*) reads the vectors of its neighbourhood ``N_i ∪ {i}``
and combines them; a Byzantine neighbour sends ``i`` a vector of its choosing. Shapes: ``m``
recipients, ``K = D + 1`` slots per neighbourhood (the padded rows of
:func:`jaxbyz.topology.neighbour_table`: slot 0 is the recipient itself, padding slots repeat it
and have weight 0), ``d`` coordinates. Recipients are a leading array axis: no Python loop over
nodes; sums over the slots are batched matrix products at ``precision=HIGHEST`` (as
:mod:`jaxbyz.rows`).

- :func:`gather`: the ``[m, K, d]`` received tensor from the ``[n, d]`` models;
- :func:`mix`: plain gossip ``Σ_k w_ik x_k``;
- :func:`clipped_gossip`, :func:`adaptive_tau`, :func:`oracle_tau`: ClippedGossip and its
  clipping radii (He, Karimireddy & Jaggi 2022, "Byzantine-robust decentralized learning via
  ClippedGossip", arXiv:2202.01545);
- :func:`neighbourhood_moments`, :func:`dissensus`: what attacks read and send;
- :func:`apply_rule`: a robust aggregation rule (:mod:`jaxbyz.aggregators`) on every
  neighbourhood, ``vmap``-ed over the neighbourhoods of each size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz.aggregators.base import Rule
from jaxbyz.attacks.statistics import masked_mean_std
from jaxbyz.rows import HIGHEST, row_norms
from jaxbyz.rows import clip_factors as row_clip_factors
from jaxbyz.topology import degree_groups

Array = jax.Array

__all__ = [
    "adaptive_tau",
    "apply_rule",
    "clip_factors",
    "clipped_gossip",
    "dissensus",
    "distances",
    "gather",
    "mix",
    "neighbourhood_moments",
    "oracle_tau",
]


def _weighted_slots(weights: Array, X: Array) -> Array:
    """``Σ_k weights[r, k] X[r, k]``: ``[m, K] x [m, K, d] -> [m, d]``, one batched product."""
    return jnp.einsum("mk,mkd->md", weights.astype(X.dtype), X, precision=HIGHEST)


def gather(x: Array, table: Array) -> Array:
    """The received tensor ``[m, K, d]``: ``x[table[r, k]]`` for the models ``x`` ``[n, d]`` and
    a neighbour table ``[m, K]`` (rows of :func:`jaxbyz.topology.neighbour_table`)."""
    return jnp.take(x, jnp.asarray(table), axis=0)


def mix(received: Array, weights: Array) -> Array:
    """Plain gossip ``x_i' = Σ_k w_ik x_k`` ``[m, d]`` (padding slots carry weight 0)."""
    return _weighted_slots(weights, received)


def distances(received: Array, own: Array) -> Array:
    """``[m, K]``: ``‖x_k - x_i‖`` from each recipient's own vector ``own`` ``[m, d]`` to its
    slots (without overflow, :func:`jaxbyz.rows.row_norms`)."""
    return jax.vmap(row_norms)(received - own[:, None, :])


def clip_factors(norms: Array, tau: Array) -> Array:
    """``min(1, τ / ‖z‖)`` for norms ``[m, K]`` and radii ``τ`` ``[m]`` (or a scalar): 1 when
    ``‖z‖ <= τ`` (``z = 0`` and ``τ = +inf`` included), so ``CLIP(z, τ) = factor · z`` never
    divides by zero."""
    tau = jnp.broadcast_to(jnp.asarray(tau, norms.dtype), norms.shape[:1])[:, None]
    return row_clip_factors(norms, tau)


def clipped_gossip(received: Array, weights: Array, own: Array, tau: Array) -> Array:
    """One ClippedGossip step (He, Karimireddy & Jaggi 2022, Algorithm 1) ``[m, d]``::

        x_i' = x_i + Σ_k w_ik CLIP(x_k - x_i, τ_i),   CLIP(z, τ) = z · min(1, τ / ‖z‖)

    ``received`` ``[m, K, d]``, ``weights`` ``[m, K]`` (0 on padding), ``own`` ``[m, d]`` the
    recipients' ``x_i``, ``tau`` ``[m]`` or a scalar (``+inf``: plain gossip). Each difference is
    clipped to the ball of radius ``τ_i`` around the recipient: a Byzantine neighbour moves ``x_i``
    by at most ``w_ik τ_i``.
    """
    diff = received - own[:, None, :]
    factors = clip_factors(jax.vmap(row_norms)(diff), tau)
    return own + _weighted_slots(weights.astype(diff.dtype) * factors, diff)


def adaptive_tau(
    received: Array, weights: Array, own: Array, mask: Array, byzantine_weight: Array
) -> Array:
    """ClippedGossip's adaptive clipping radius ``τ_i`` ``[m]``, which needs no knowledge of who
    is Byzantine, only the Byzantine weight ``δ_i = Σ_{j Byzantine} W_ij`` of each recipient.

    The radius of the paper's theorem (:func:`oracle_tau`) is
    ``τ_i = sqrt((1/δ_i) Σ_{j honest} W_ij ‖x_j - x_i‖²)``. Node ``i`` does not know its honest
    neighbours; the practical rule takes instead the neighbours nearest to ``x_i`` that carry
    the honest weight ``Σ_k w_ik - δ_i``, assuming the farthest ``δ_i`` of the weight
    Byzantine. With the slots sorted by ``d_k = ‖x_k - x_i‖`` (ties by slot order) and
    ``c_k`` the cumulative weight up to and including slot ``k``::

        S_i = {k : c_k <= Σ_k w_ik - δ_i}          (the self slot, d = 0, comes first)
        τ_i = sqrt((1/δ_i) Σ_{k ∈ S_i} w_ik d_k²),  τ_i = +inf when δ_i = 0 (no clipping)

    A slot whose weight straddles the bound is left out (at least ``δ_i`` of the weight is
    excluded); the comparison allows ``1e-5`` of the total for float32 rounding, so that
    ``δ_i`` equal to the weight of the farthest slots (``b`` Byzantine neighbours of equal
    weight) keeps exactly the others.

    Sources: the theorem's radius is the one of the authors' ``consensus.ipynb``
    (``SSClip.agg``, with the honest set known) in github.com/epfml/byzantine-robust-
    decentralized-optimizer; the practical rule without it is the one Gaucher, Dieuleveut &
    Hendrikx (2024, "Unified breakdown analysis for Byzantine robust gossip",
    arXiv:2410.10418) reimplement as ``cs_he`` ("CShe practical"), there with a strict
    ``c_k < Σ w - δ_i``, which on a ring with one Byzantine neighbour keeps only the node
    itself (τ = 0). The authors' training code (``SelfCenteredClipping`` with no ``tau``) uses
    another heuristic, ``τ_i`` = the second-largest neighbour distance; not this function.
    The paper's own wording of the practical rule could not be checked here (only its abstract
    was at hand): the formula above is the theorem's radius with the honest set replaced by the
    nearest ``1 - δ_i`` of the weight, as in the reimplementation cited.

    ``mask`` ``[m, K]`` marks the real slots (padding slots count for nothing).
    """
    dist = jnp.where(mask, distances(received, own), 0.0)
    w = jnp.where(mask, weights, 0.0).astype(dist.dtype)
    order = jnp.argsort(dist, axis=1, stable=True)
    d_sorted = jnp.take_along_axis(dist, order, axis=1)
    w_sorted = jnp.take_along_axis(w, order, axis=1)
    cumulative = jnp.cumsum(w_sorted, axis=1)
    total = cumulative[:, -1]
    delta = jnp.asarray(byzantine_weight, dist.dtype)
    kept = cumulative <= (total - delta + 1e-5 * total)[:, None]
    return _radius(jnp.where(kept, w_sorted, 0.0), d_sorted, delta)


def oracle_tau(
    received: Array, weights: Array, own: Array, honest: Array, byzantine_weight: Array
) -> Array:
    """The clipping radius of ClippedGossip's theorem ``[m]`` (He, Karimireddy & Jaggi 2022),
    which knows the honest slots: ``τ_i = sqrt((1/δ_i) Σ_{k honest} w_ik ‖x_k - x_i‖²)``,
    ``+inf`` when ``δ_i = 0``; ``honest`` ``[m, K]`` bool (padding False)."""
    dist = distances(received, own)
    w = jnp.where(honest, weights, 0.0).astype(dist.dtype)
    return _radius(w, dist, jnp.asarray(byzantine_weight, dist.dtype))


def _radius(w: Array, dist: Array, delta: Array) -> Array:
    """``sqrt(Σ_k w_k d_k² / δ)`` per row, ``+inf`` where ``δ <= 0``; the distances are scaled
    by the row's largest weighted one first, so large finite distances do not overflow."""
    scale = jnp.max(jnp.where(w > 0, dist, 0.0), axis=1)
    safe = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    ratio = jnp.where(w > 0, dist / safe[:, None], 0.0)
    positive = delta > 0
    mean_square = jnp.sum(w * ratio * ratio, axis=1) / jnp.where(positive, delta, 1.0)
    return jnp.where(positive, safe * jnp.sqrt(mean_square), jnp.inf)


def neighbourhood_moments(received: Array, honest: Array) -> tuple[Array, Array]:
    """Coordinate-wise mean ``mu`` and unbiased standard deviation ``sigma`` ``[m, d]`` of each
    recipient's honest slots (``honest`` ``[m, K]`` bool, ``h_i`` of them)::

        mu_i = (1/h_i) Σ_{k honest} x_k,   sigma_i = sqrt(Σ_{k honest} (x_k - mu_i)² / (h_i - 1))

    :func:`jaxbyz.attacks.statistics.masked_mean_std` of each neighbourhood (two-pass, as
    ``mean_std`` on the honest rows); ``sigma_i = 0`` with one honest slot, and both 0 with none.
    """
    return jax.vmap(masked_mean_std)(received, jnp.asarray(honest, jnp.bool_))


def dissensus(
    received: Array,
    weights: Array,
    own: Array,
    honest: Array,
    byzantine: Array,
    epsilon: Array | float,
) -> Array:
    """The vector ``v_i`` ``[m, d]`` every Byzantine neighbour of recipient ``i`` sends in the
    dissensus attack (He, Karimireddy & Jaggi 2022)::

        v_i = x_i - ε · Σ_{k honest} w_ik (x_k - x_i) / Σ_{k Byzantine} w_ik

    so that the Byzantine terms of ``i``'s gossip, ``Σ_{k Byz} w_ik (v_i - x_i)``, cancel ``ε``
    times the pull of its honest neighbours: ``ε = 1`` freezes plain gossip, ``ε > 1`` drives
    the neighbourhoods apart. This is ``DissensusWorker`` in the authors' ``codes/attacks.py``
    (github.com/epfml/byzantine-robust-decentralized-optimizer): ``tm - ε · partial_sum /
    partial_byz_weights`` with the target's gossip weights; against a rule without gossip
    weights they use the uniform ``1 / (deg_i + 1)``, which the caller passes as ``weights``.

    ``honest`` and ``byzantine`` ``[m, K]`` bool mark the slots (padding in neither; the self
    slot adds ``x_i - x_i = 0`` either way); ``epsilon`` a scalar or ``[m]``. A recipient without
    Byzantine neighbour gets ``x_i`` (nobody sends it anything).
    """
    diff = received - own[:, None, :]
    pull = _weighted_slots(jnp.where(honest, weights, 0.0), diff)
    byz_weight = jnp.sum(jnp.where(byzantine, weights, 0.0), axis=1).astype(own.dtype)
    attacked = byz_weight > 0
    eps = jnp.broadcast_to(jnp.asarray(epsilon, own.dtype), byz_weight.shape)
    scale = jnp.where(attacked, eps / jnp.where(attacked, byz_weight, 1.0), 0.0)
    return own - scale[:, None] * pull


def apply_rule(
    rule: Rule,
    received: Array,
    mask: np.ndarray,
    f_decl: int,
    key: Array | None,
    *,
    prev: Array | None = None,
) -> Array:
    """The robust ``rule`` applied to each recipient's neighbourhood ``[m, d]``.

    Recipient ``r`` aggregates the ``k_r`` real slots of ``received[r]`` (``mask[r]``, a NumPy
    ``[m, K]`` bool: the grouping is static) with ``rule(X_r, f_decl, key=key_r)``. The rule's
    row count is static, so the recipients are grouped by ``k``
    (:func:`jaxbyz.topology.degree_groups`): each group's slots are gathered into
    ``[g, k, d]`` and the rule ``vmap``-ed over it; the results are put back in recipient order.
    ``key_r`` is the ``r``-th of ``jax.random.split(key, m)`` (the same whatever the grouping);
    ``key`` may be None for a rule that draws nothing. A rule centred on a previous aggregate
    (``rule.needs_prev``, centered clipping) is centred on ``prev[r]`` (``[m, d]``; pass the
    recipients' own models for self-centred clipping), or on 0 when ``prev`` is None.

    Raises ValueError for a rule that needs the server's own gradient (FLTrust: there is no
    server), or that draws randomness without ``key``.
    """
    if rule.needs_reference:
        raise ValueError(
            f"rule {rule.name} weighs the inputs by a server's own gradient, and decentralized "
            "learning has no server; fix: choose a rule without a reference gradient"
        )
    if rule.needs_key and key is None:
        raise ValueError(f"rule {rule.name} draws randomness: pass key=jax.random.key(...)")
    mask = np.asarray(mask, np.bool_)
    m = mask.shape[0]
    keys = None if key is None else jax.random.split(key, m)
    parts, order = [], []
    for k, rows in degree_groups(mask):
        slots = np.nonzero(mask[rows])[1].reshape(len(rows), k)  # [g, k], ascending per row
        X = received[rows[:, None], slots]  # [g, k, d]
        group_keys = None if keys is None else keys[rows]
        group_prev = None if prev is None or not rule.needs_prev else prev[rows]
        parts.append(_vmapped(rule, f_decl, X, group_keys, group_prev))
        order.append(rows)
    if len(parts) == 1:  # one neighbourhood size: already in recipient order
        return parts[0]
    inverse = np.argsort(np.concatenate(order), kind="stable")
    return jnp.concatenate(parts, axis=0)[inverse]


def _vmapped(rule: Rule, f: int, X: Array, keys: Array | None, prev: Array | None) -> Array:
    """``rule(X[g], f, key=keys[g], prev=prev[g])`` for each ``g`` of ``X`` ``[G, k, d]``."""

    def one(X_g: Array, key_g: Array | None, prev_g: Array | None) -> Array:
        return rule(X_g, f, key=key_g, prev=prev_g)

    in_axes = (0, None if keys is None else 0, None if prev is None else 0)
    return jax.vmap(one, in_axes=in_axes)(X, keys, prev)
