"""Coordinate-wise statistics of the honest submissions that only the attacks use.

The mean ``mu`` (:func:`jaxbyz.rows.row_mean`), weighted sums and the broadcast of one vector to
every Byzantine worker come from :mod:`jaxbyz.rows`, as for the rules: sums over the worker axis
are matrix-vector products at ``precision=HIGHEST``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbyz.rows import row_mean, row_weighted_sum

Array = jax.Array
__all__ = ["masked_mean_std", "mean_std"]


def masked_mean_std(X: Array, mask: Array) -> tuple[Array, Array]:
    """:func:`mean_std` of the rows of ``X`` ``[k, d]`` where ``mask`` ``[k]`` is true: the
    rows of a fixed-shape matrix whose number varies (the honest clients of a round). With
    fewer than two such rows ``sigma`` is 0."""
    count = jnp.sum(mask)
    weights = mask / jnp.maximum(count, 1)
    mu = row_weighted_sum(weights, X)
    dev = jnp.where(mask[:, None], X - mu, 0.0)
    spread = mask / jnp.maximum(count - 1, 1)
    return mu, jnp.sqrt(row_weighted_sum(spread, dev * dev))


def mean_std(H: Array) -> tuple[Array, Array]:
    """Coordinate-wise mean ``mu`` and unbiased standard deviation ``sigma`` of the rows.

    ``sigma_j = sqrt(sum_i (H_ij - mu_j)^2 / (h - 1))`` (two-pass, as ``torch.var``'s default,
    which the paper's code uses). With a single row ``sigma`` is 0 (torch returns NaN).
    """
    h = H.shape[0]
    mu = row_mean(H)
    if h == 1:
        return mu, jnp.zeros_like(mu)
    dev = H - mu
    var = row_weighted_sum(jnp.full((h,), 1.0 / (h - 1), H.dtype), dev * dev)
    return mu, jnp.sqrt(var)
