"""Coordinate-wise statistics of the honest submissions, shared by the attacks.

Reductions over the (short) worker axis are written as matrix-vector products: on CPU,
``jnp.dot(w, H)`` is about 40x faster than ``H.mean(0)`` (DESIGN section 4). ``precision=HIGHEST``
keeps GPUs from rounding the operands to TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbyz.aggregators.ops import HIGHEST
from jaxbyz.aggregators.ops import row_mean as mean  # mu = (1/h) sum_i H_i, one mat-vec product
from jaxbyz.aggregators.ops import row_weighted_sum as weighted_sum  # sum_i w_i H_i

Array = jax.Array
__all__ = ["HIGHEST", "broadcast", "mean", "mean_std", "weighted_sum"]


def mean_std(H: Array) -> tuple[Array, Array]:
    """Coordinate-wise mean ``mu`` and unbiased standard deviation ``sigma`` of the rows.

    ``sigma_j = sqrt(sum_i (H_ij - mu_j)^2 / (h - 1))`` (two-pass, as ``torch.var``'s default,
    which the paper's code uses). With a single row ``sigma`` is 0 (torch returns NaN).
    """
    h = H.shape[0]
    mu = mean(H)
    if h == 1:
        return mu, jnp.zeros_like(mu)
    dev = H - mu
    var = weighted_sum(jnp.full((h,), 1.0 / (h - 1), H.dtype), dev * dev)
    return mu, jnp.sqrt(var)


def broadcast(v: Array, f: int) -> Array:
    """The ``[f, d]`` matrix whose rows are all ``v`` (every Byzantine worker sends ``v``)."""
    return jnp.broadcast_to(v, (f, v.shape[-1]))
