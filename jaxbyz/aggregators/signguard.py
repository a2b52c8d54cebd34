"""SignGuard (Xu, Huang, Xu, Jiang, Zhou & Zhang, ICDCS 2022, "SignGuard: Byzantine-robust
Federated Learning through Collaborative Malicious Gradient Filtering"), as the authors' code
(JianXu95/SignGuard, ``aggregators/signguard.py``, class ``signguard_multiclass``).

With ``M = med_i ‖g_i‖`` (``np.median``: the mean of the two middle norms for even ``n``; the
authors clip with ``torch.median``, the lower middle one):

1. norm filter: ``S1 = {i : L M <= ‖g_i‖ <= R M}`` (``L = 0.1``, ``R = 3.0``; inclusive as in
   Blades, the authors' code uses strict inequalities);
2. sign filter: on a block of ``b = max(1, ⌊fraction · d⌋)`` consecutive coordinates starting
   at a random offset ``o`` uniform in ``[0, d - b]`` (:func:`block_start`; ``fraction = 0.1``;
   the authors also take a random contiguous block, ``o = torch.randint(0, d - b)``, which
   excludes ``o = d - b``), the features of row ``i`` are its fractions of positive, zero and
   negative coordinates, each divided by its maximum over the rows plus ``1e-8``; the features
   are clustered by mean shift and ``S2`` is the most populated cluster;
3. ``accepted = S1 ∩ S2``; the aggregate is the mean over the accepted rows of
   ``g_i · min(1, M / ‖g_i‖)`` (each clipped to the median norm).

Mean shift (flat kernel, bandwidth ``h``), as scikit-learn's ``MeanShift(bandwidth=h,
cluster_all=False)`` with the feature points as seeds (its ``bin_seeding=False``; the authors
pass ``bin_seeding=True``, which seeds from a grid of cell ``h`` instead):

- each seed ``m`` is updated at most ``iters`` times, ``m ← mean{x_j : ‖x_j - m‖ <= h}``, and
  stops after the first update that moves it by at most ``10⁻³ h`` (scikit-learn's
  ``max_iter`` is ``iters - 1``); its intensity is the size of its last window;
- the modes are ranked by decreasing intensity (ties: lower seed index; scikit-learn breaks
  ties by the mode's coordinates) and a mode is kept when no better-ranked kept mode lies within
  ``h``;
- each row goes to its nearest kept mode (ties: better rank), or to none when farther than
  ``h``; ``S2`` is the rows of the mode with the most rows (ties: better rank).

Bandwidth: ``bandwidth=None`` estimates it as scikit-learn's ``estimate_bandwidth(X, quantile)``:
the mean over the rows of the distance to their ``max(1, ⌊quantile · n⌋)``-th nearest row,
itself counted first (the authors: ``quantile=0.5, n_samples=50``; we use all ``n`` rows, the
same when ``n <= 50``), floored at ``1e-6`` (all features equal give 0, which scikit-learn
refuses); a number fixes ``h``.

Non-finite rows: their NaN coordinates count as 0 in the sign features (as the authors'
``grads[isnan] = 0``), but their norm counts as ``+Inf`` (the authors' zeroed row keeps a
finite norm), so they fail the norm filter and the median is finite when ``n >= 2f + 1``.
Norms are computed without overflow (1e30 rows have their norm). If no row passes both filters
the aggregate is the zero vector (the authors' mean of no rows is NaN). Blades' ``Signguard``
replaces mean shift by 2-means and keeps the cluster of more than ``⌊n/2⌋`` rows; we follow
the authors.

Needs ``n >= 2f + 1`` (the median norm must come from a finite row) and a PRNG key.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.clustering import median_of
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import clip_factors, row_finite, row_norms, row_weighted_sum
from jaxbyz.validation import integer, invalid, number, reject_unknown

Array = jax.Array
MIN_BANDWIDTH = 1e-6
STOP = 1e-3  # a seed stops once it moves by at most STOP * h (scikit-learn)


def block_size(d: int, fraction: float) -> int:
    """``b = max(1, ⌊fraction · d⌋)`` coordinates in the sign block (at most ``d``)."""
    return min(d, max(1, int(fraction * d)))


def block_start(key: Array, d: int, b: int) -> Array:
    """The block's first coordinate, uniform in ``[0, d - b]``."""
    return jax.random.randint(key, (), 0, d - b + 1)


def sign_features(B: Array) -> Array:
    """``[n, 3]``: fractions of positive, zero, negative entries of each row of ``B`` (NaN as 0),
    each divided by its maximum over the rows plus ``1e-8``."""
    B = jnp.where(jnp.isnan(B), 0.0, B)
    F = jnp.stack([jnp.mean(B > 0, axis=1), jnp.mean(B == 0, axis=1), jnp.mean(B < 0, axis=1)], 1)
    return F / (jnp.max(F, axis=0) + 1e-8)


def _distances(A: Array, B: Array) -> Array:
    """Euclidean distances ``[len(A), len(B)]`` between few-dimensional points (exact)."""
    return jnp.sqrt(jnp.sum(jnp.square(A[:, None, :] - B[None, :, :]), axis=-1))


def estimate_bandwidth(X: Array, quantile: float) -> Array:
    """Mean distance of each point to its ``max(1, ⌊quantile n⌋)``-th nearest (itself first)."""
    n = X.shape[0]
    k = max(1, int(quantile * n))
    return jnp.mean(jnp.sort(_distances(X, X), axis=1)[:, k - 1])


def mean_shift(X: Array, h: Array, iters: int) -> Array:
    """``[n]`` bool: the rows of the most populated mean-shift cluster (module docstring)."""
    n = X.shape[0]

    def cond(state: tuple[Array, Array, Array, Array]) -> Array:
        t, _, _, done = state
        return (t < iters) & ~jnp.all(done)

    def step(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        t, modes, intensity, done = state
        window = (_distances(modes, X) <= h).astype(X.dtype)  # [seeds, points]
        count = jnp.sum(window, axis=1)
        moved = jnp.dot(window, X, precision=lax.Precision.HIGHEST) / jnp.maximum(count, 1)[:, None]
        empty = count == 0
        update = ~done & ~empty
        shift = jnp.sqrt(jnp.sum(jnp.square(moved - modes), axis=1))
        modes = jnp.where(update[:, None], moved, modes)
        intensity = jnp.where(done, intensity, count)
        done = done | empty | (shift <= STOP * h)
        return t + 1, modes, intensity, done

    start = (jnp.int32(0), X, jnp.zeros((n,), X.dtype), jnp.zeros((n,), bool))
    _, modes, intensity, _ = lax.while_loop(cond, step, start)
    rank = jnp.argsort(-intensity, stable=True)  # modes by decreasing intensity
    modes, valid = modes[rank], intensity[rank] > 0
    near = _distances(modes, modes) <= h

    def keep(k: Array, kept: Array) -> Array:
        return kept.at[k].set(valid[k] & ~jnp.any(kept & near[k]))

    kept = lax.fori_loop(0, n, keep, jnp.zeros((n,), bool))
    to_mode = jnp.where(kept[None, :], _distances(X, modes), jnp.inf)  # [points, ranked modes]
    nearest = jnp.argmin(to_mode, axis=1)
    member = jnp.min(to_mode, axis=1) <= h
    counts = jnp.zeros((n,), jnp.int32).at[nearest].add(member.astype(jnp.int32))
    return member & (nearest == jnp.argmax(counts))


def median_norm(G: Array) -> tuple[Array, Array]:
    """``(norms, M)``: the rows' norms (``+Inf`` for a non-finite row) and their median ``M``."""
    norms = jnp.where(row_finite(G), row_norms(G), jnp.inf)
    return norms, median_of(norms)


def sign_cluster(
    G: Array, key: Array, fraction: float, quantile: float, bandwidth: float | None, iters: int
) -> Array:
    """``[n]`` bool: the sign filter ``S2``, the rows of the most populated mean-shift cluster
    of the sign features of a random block of coordinates (step 2 of the module docstring)."""
    d = G.shape[1]
    b = block_size(d, fraction)
    X = sign_features(lax.dynamic_slice_in_dim(G, block_start(key, d, b), b, axis=1))
    if bandwidth is None:
        h = jnp.maximum(estimate_bandwidth(X, quantile), MIN_BANDWIDTH)
    else:
        h = jnp.asarray(bandwidth, X.dtype)
    return mean_shift(X, h, iters)


def _signguard(
    G: Array,
    f: int,
    *,
    key: Array,
    prev: Any = None,
    L: float,
    R: float,
    fraction: float,
    quantile: float,
    bandwidth: float | None,
    iters: int,
) -> tuple[Array, Array]:
    norms, M = median_norm(G)
    by_norm = (norms >= L * M) & (norms <= R * M)
    accepted = by_norm & sign_cluster(G, key, fraction, quantile, bandwidth, iters)
    weights = jnp.where(accepted, clip_factors(norms, M), 0.0) / jnp.maximum(jnp.sum(accepted), 1)
    aggregate = row_weighted_sum(weights, jnp.where(accepted[:, None], G, 0.0))
    return aggregate, accepted.astype(jnp.float32)


def _unit(owner: str, name: str, value: Any) -> float:
    """A number in ``(0, 1]``."""
    if number(owner, name, value, above=0) > 1:
        raise invalid(owner, name, value, "pass a number in (0, 1]")
    return float(value)


def _signguard_check(n: int, f: int, **_: Any) -> str | None:
    return "signguard needs n >= 2f+1" if n < 2 * f + 1 else None


@register("signguard")
def signguard(
    L: float = 0.1,
    R: float = 3.0,
    fraction: float = 0.1,
    quantile: float = 0.5,
    bandwidth: float | None = None,
    iters: int = 300,
    **unknown: Any,
) -> Rule:
    """SignGuard: norm filter ∩ largest mean-shift cluster of sign statistics, mean of the
    accepted rows clipped to the median norm.

    Args:
      L: lower norm ratio ``0 <= L``: rows of norm below ``L`` times the median are rejected.
      R: upper norm ratio ``R >= L``: rows of norm above ``R`` times the median are rejected.
      fraction: share ``0 < fraction <= 1`` of the coordinates in the sign block.
      quantile: neighbour quantile ``0 < quantile <= 1`` of the bandwidth estimate.
      bandwidth: fixed mean-shift bandwidth ``> 0``; None estimates it (``quantile``).
      iters: most mean-shift updates per seed (>= 1).
    """
    owner = "signguard"
    reject_unknown(owner, unknown, ("L", "R", "fraction", "quantile", "bandwidth", "iters"))
    L = number(owner, "L", L, minimum=0)
    R = number(owner, "R", R, minimum=L)
    fraction = _unit(owner, "fraction", fraction)
    quantile = _unit(owner, "quantile", quantile)
    if bandwidth is not None:
        bandwidth = number(owner, "bandwidth", bandwidth, above=0)
    iters = integer(owner, "iters", iters, minimum=1)
    params = {"L": L, "R": R, "fraction": fraction, "quantile": quantile}
    params |= {"bandwidth": bandwidth, "iters": iters}
    return Rule(
        name=owner,
        fn=_signguard,
        params=params,
        check_fn=_signguard_check,
        selects=True,
        needs_key=True,
    )
