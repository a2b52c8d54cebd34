"""Spectral robust means: CAF and SMEA (Allouah, Guerraoui et al.), from exact eigenvalues.

Both rules judge a (weighted) set of rows by the largest eigenvalue of its empirical covariance,
computed exactly from an ``[k, k]`` Gram matrix of the centred rows (which has the same nonzero
eigenvalues as the ``[d, d]`` covariance; ``d`` may be far larger than the ``k`` rows).

**CAF**, Covariance-bound-Agnostic Filter (Allouah, Guerraoui & Stephan, "Towards Trustworthy
Federated Learning with Untrusted Participants", ICML 2025, Algorithm 2). Weights ``c_i = 1``;
while ``Σ_i c_i > n - 2f``:

- ``μ_c = Σ_i c_i x_i / Σ_i c_i`` and ``Σ_c = Σ_i c_i (x_i - μ_c)(x_i - μ_c)ᵀ / Σ_i c_i``;
- ``(λ, v)``: the dominant eigenpair of ``Σ_c``;
- ``τ_i = ((x_i - μ_c)ᵀ v)²`` and ``c_i ← c_i (1 - τ_i / max_{j: c_j > 0} τ_j)``.

The result is the ``μ_c`` of smallest ``λ`` among the weight vectors visited (the first on ties);
``accepted`` is that ``c`` (each ``c_i ∈ [0, 1]``). The row of largest ``τ`` loses all its weight,
so each pass zeroes at least one weight and the loop stops after at most ``2f`` passes (a
``lax.while_loop`` capped there). The eigenpair is exact: with
``Y = diag(sqrt(c / Σc)) (X - μ_c)``, ``Σ_c = YᵀY`` and ``YYᵀ`` ``[n, n]`` share their nonzero
eigenvalues, so ``eigh(YYᵀ) = (λ, u)`` gives ``v = Yᵀu / ‖Yᵀu‖``. Needs ``n > 2f``.

Checked against ByzFL's ``CAF`` (github.com/LPD-EPFL/byzfl, ``byzfl/aggregators/aggregators.py``),
the authors' library, whose loop, stopping rule and "smallest λ encountered" output we follow.
Where we differ, on the same inputs:

- ByzFL estimates ``(λ, v)`` by ONE power iteration from a random Gaussian start
  (``v = Σ_c v_0 / ‖Σ_c v_0‖``, ``λ = vᵀ Σ_c v_0``): ``v`` keeps the start's components along the
  other eigenvectors scaled by ``λ_j / λ_1``, so when the top eigenvalues are close (or many
  directions have comparable variance, as for gradients in high dimension) it is far from the
  dominant eigenvector, and its ``τ``, weights and output are random. Here they are exact and
  deterministic (``tests/test_spectral_rules.py`` shows a case where one power step is far off);
- ByzFL divides by ``max_j τ_j`` over all rows, including those already at weight 0; we take the
  maximum over the rows still weighted (the paper's filter), which is what guarantees that a
  weight is zeroed in every pass and makes rows of weight 0 irrelevant;
- ``f = 0``: ByzFL never enters the loop and returns ``None``; here the weights ``c = 1`` are
  always evaluated once, so the result is the average. If every weighted row lies on ``μ_c``
  along ``v`` (``max τ = 0``, hence ``λ = 0``, which cannot be beaten) the loop stops instead of
  dividing by zero.

Non-finite rows (NaN, ±Inf) start with weight 0 (an infinitely far row is the one zeroed by the
first pass). Each pass divides ``X - μ_c`` by its largest weighted magnitude before forming the
Gram matrix and compares ``sqrt(λ)``, so finite rows of huge values (1e30) do not overflow.

**SMEA**, Smallest Maximum Eigenvalue Averaging (Allouah, Guerraoui, Gupta, Pinot & Stephan, "On
the Privacy-Robustness-Utility Trilemma in Distributed Learning", ICML 2023): among all subsets
``S`` of ``n - f`` rows, the one minimising ``λ_max(Σ_S)``,
``Σ_S = (1/|S|) Σ_{i ∈ S} (x_i - μ_S)(x_i - μ_S)ᵀ``, the first in lexicographic order
(``itertools.combinations``) on ties; the result is ``μ_S``, ``accepted`` its indicator. Each
``λ_max(Σ_S)`` is the top eigenvalue of the double-centred ``[n-f, n-f]`` block of one Gram
matrix of the rows (centred on their coordinate-wise median first, for precision), ``eigvalsh``
vmapped over the subsets. Subsets holding a row that is non-finite or whose squared norm
overflows have ``λ = +Inf``. Exponential: the ``C(n, f)`` subsets are enumerated statically and the
rule refuses when there are more than ``max_subsets`` (default 10^6). Needs ``n > 2f``. Checked
against ByzFL's ``SMEA`` (same file), which estimates each ``λ_max`` by one power iteration from a
random start (so its choice of subset is random); here the eigenvalues are exact.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.brute import MAX_SUBSETS, subsets
from jaxbyz.aggregators.coordinatewise import coordinate_median
from jaxbyz.aggregators.distance import gram
from jaxbyz.aggregators.ops import mask_of
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import HIGHEST, row_finite, row_mean, row_weighted_sum
from jaxbyz.validation import integer, reject_unknown

Array = jax.Array
_GRAM_BUDGET = 1 << 22  # Gram entries gathered per batch of subsets (SMEA)


# ------------------------------------------------------------------------------------------ CAF


def _weighted_spectrum(
    X: Array, c: Array, hold_direction: bool = False
) -> tuple[Array, Array, Array, Array, Array]:
    """``(μ_c, Z, s, λ', v)``: ``X - μ_c = s Z``, ``λ_max(Σ_c) = s² λ'``, ``v`` its eigenvector.

    ``s`` is the largest magnitude of ``X - μ_c`` over the rows of positive weight (1 if none),
    so ``Z`` is at most 1 in magnitude on those rows and their Gram matrix cannot overflow.
    ``v = 0`` when ``Σ_c = 0``. ``hold_direction``: the eigendecomposition is held constant
    under differentiation (``λ' = uᵀ (YYᵀ) u`` with ``u`` constant: the derivative of a simple
    eigenvalue; ``v`` constant), since ``eigh``'s derivative is infinite where eigenvalues
    repeat, as the zero eigenvalues of the rows of weight 0 do.
    """
    total = jnp.sum(c)
    w = c / jnp.where(total > 0, total, 1.0)
    mu = row_weighted_sum(w, X)
    diffs = X - mu
    active = c > 0
    s = jnp.max(jnp.where(active, jnp.max(jnp.abs(diffs), axis=1), 0.0))
    s = jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)
    Z = diffs / s
    Y = jnp.where(active[:, None], jnp.sqrt(w)[:, None] * Z, 0.0)
    K = jnp.dot(Y, Y.T, precision=HIGHEST)
    eigenvalues, eigenvectors = jnp.linalg.eigh(lax.stop_gradient(K) if hold_direction else K)
    u = eigenvectors[:, -1]
    direction = jnp.dot(u, Y, precision=HIGHEST)  # Yᵀu
    norm = jnp.linalg.norm(direction)
    v = jnp.where(norm > 0, direction / jnp.where(norm > 0, norm, 1.0), 0.0)
    if hold_direction:
        lam = jnp.dot(u, jnp.dot(K, u, precision=HIGHEST), precision=HIGHEST)
        return mu, Z, s, jnp.maximum(lam, 0.0), lax.stop_gradient(v)
    return mu, Z, s, jnp.maximum(eigenvalues[-1], 0.0), v


def dominant_eigenpair(X: Array, c: Array | None = None) -> tuple[Array, Array]:
    """``(λ, v)``: the largest eigenvalue of the ``c``-weighted covariance ``Σ_c`` of the rows of
    ``X`` ``[n, d]`` (weights ``c`` ``[n] >= 0``, default all 1) and a unit eigenvector ``[d]``,
    computed exactly from the ``[n, n]`` weighted Gram matrix (see the module docstring)."""
    c = jnp.ones(X.shape[0], X.dtype) if c is None else jnp.asarray(c, X.dtype)
    _, _, s, lam, v = _weighted_spectrum(X, c)
    return s * s * lam, v


def caf_pass(X: Array, c: Array, hold_direction: bool = False) -> tuple[Array, Array, Array, Array]:
    """One pass of the filter on finite rows ``X`` with weights ``c``: ``(μ_c,
    sqrt(λ_max(Σ_c)), the next weights, whether they moved)`` (``hold_direction``: see
    :func:`_weighted_spectrum`)."""
    mu, Z, s, lam, v = _weighted_spectrum(X, c, hold_direction)
    active = c > 0
    tau = jnp.where(active, jnp.square(jnp.dot(Z, v, precision=HIGHEST)), 0.0)
    tau_max = jnp.max(tau)
    moved = tau_max > 0
    # clamped, and exactly 1 at the maximum: XLA may divide as a product by the reciprocal
    ratio = jnp.minimum(tau / jnp.where(moved, tau_max, 1.0), 1.0)
    ratio = jnp.where(tau >= tau_max, 1.0, ratio)
    c_next = jnp.where(active & moved, c * (1.0 - ratio), c)
    return mu, s * jnp.sqrt(lam), c_next, moved


def caf_filter(G: Array, f: int) -> tuple[Array, Array]:
    """CAF of the rows of ``G`` ``[n, d]``: (``μ_c`` of smallest ``λ_max``, its weights ``c``)."""
    n = G.shape[0]
    finite = row_finite(G)
    X = jnp.where(finite[:, None], G, 0.0)
    budget = n - 2 * f

    def visit(c: Array) -> tuple[Array, Array, Array, Array]:
        return caf_pass(X, c)

    def keep_going(state: tuple) -> Array:
        passes, c, moved = state[:3]
        return (passes < max(2 * f, 1)) & moved & (jnp.sum(c) > budget)

    def step(state: tuple) -> tuple:
        passes, c, _, best_spread, best_mu, best_c = state
        mu, spread, c_next, moved = visit(c)
        better = spread < best_spread
        return (
            passes + 1,
            c_next,
            moved,
            jnp.where(better, spread, best_spread),
            jnp.where(better, mu, best_mu),
            jnp.where(better, c, best_c),
        )

    c0 = finite.astype(X.dtype)
    mu0, spread0, c1, moved0 = visit(c0)  # c = 1 is always evaluated (f = 0: the average)
    state = (jnp.int32(1), c1, moved0, spread0, mu0, c0)
    *_, mu, c = lax.while_loop(keep_going, step, state)
    return mu, c


def _caf(G: Array, f: int, *, key: Any = None, prev: Any = None) -> tuple[Array, Array]:
    mu, c = caf_filter(G, f)
    return mu, c.astype(jnp.float32)


def _majority_check(name: str):
    def check(n: int, f: int, **_: Any) -> str | None:
        return f"{name} needs n >= 2f+1" if n < 2 * f + 1 else None

    return check


@register("caf")
def caf(**unknown: Any) -> Rule:
    """Covariance-bound-agnostic filter (see the module docstring); ``accepted`` are the weights
    ``c ∈ [0, 1]`` of the returned weighted mean."""
    reject_unknown("caf", unknown, ())
    return Rule(name="caf", fn=_caf, check_fn=_majority_check("caf"), selects=True)


# ----------------------------------------------------------------------------------------- SMEA


def _too_many(n: int, f: int, max_subsets: int) -> str | None:
    count = math.comb(n, f)
    if count > max_subsets:
        return f"smea needs C(n, f) <= max_subsets={max_subsets} subsets (C(n, f)={count})"
    return None


def subset_top_eigenvalues(G: Array, candidates: Array, hold_direction: bool = False) -> Array:
    """``λ_max(Σ_S)`` for each row ``S`` of ``candidates`` ``[s, k]`` (indices into ``G``'s rows);
    ``+Inf`` for the subsets holding a row that is non-finite or whose squared norm overflows.
    ``hold_direction``: each ``λ_max`` is ``uᵀ B u / k`` with its eigenvector ``u`` held constant
    under differentiation (the derivative of a simple eigenvalue, finite where ``eigvalsh``'s
    derivative, which solves for every eigenvector, is not)."""
    k = candidates.shape[1]
    centre = lax.stop_gradient(coordinate_median(G))  # the double centring removes it exactly
    X = G - jnp.where(jnp.isfinite(centre), centre, 0.0)
    K = gram(X)
    ok = jnp.isfinite(jnp.diagonal(K))
    K = jnp.where(ok[:, None] & ok[None, :], K, 0.0)

    def top(idx: Array) -> Array:
        block = K[idx[:, None], idx[None, :]]
        r = jnp.mean(block, axis=1)
        centred = block - r[:, None] - r[None, :] + jnp.mean(r)
        if hold_direction:
            u = jnp.linalg.eigh(lax.stop_gradient(centred))[1][:, -1]
            lam = jnp.dot(u, jnp.dot(centred, u, precision=HIGHEST)) / k
        else:
            lam = jnp.linalg.eigvalsh(centred)[-1] / k
        return jnp.where(jnp.all(ok[idx]) & ~jnp.isnan(lam), lam, jnp.inf)

    batch = max(1, _GRAM_BUDGET // (k * k))
    return lax.map(top, candidates, batch_size=min(batch, candidates.shape[0]))


def _smea(
    G: Array, f: int, *, key: Any = None, prev: Any = None, max_subsets: int
) -> tuple[Array, Array]:
    n = G.shape[0]
    message = _too_many(n, f, max_subsets)
    if message is not None:
        raise ValueError(f"{message}, got n={n}, f={f}; use caf for this many workers")
    candidates = jnp.asarray(subsets(n, n - f))
    best = candidates[jnp.argmin(subset_top_eigenvalues(G, candidates))]
    return row_mean(jnp.take(G, best, axis=0)), mask_of(best, n)


def _smea_check(n: int, f: int, max_subsets: int = MAX_SUBSETS, **_: Any) -> str | None:
    return _majority_check("smea")(n, f) or _too_many(n, f, max_subsets)


@register("smea")
def smea(max_subsets: int = MAX_SUBSETS, **unknown: Any) -> Rule:
    """Smallest-maximum-eigenvalue averaging over all ``n-f`` subsets (refused beyond
    ``max_subsets`` subsets)."""
    reject_unknown("smea", unknown, ("max_subsets",))
    max_subsets = integer("smea", "max_subsets", max_subsets, minimum=1)
    return Rule(
        name="smea",
        fn=_smea,
        params={"max_subsets": max_subsets},
        check_fn=_smea_check,
        selects=True,
    )
