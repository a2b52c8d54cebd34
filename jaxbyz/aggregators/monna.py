"""MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot & Stephan, ICML 2023): the mean of the
``n - f`` rows nearest to a pivot.

In MoNNA each honest worker averages the ``n - f`` momenta nearest to its own, trusted one. With
a single server, the pivot must be chosen: ``pivot="median"`` (default) uses the coordinate-wise
median, which needs no trust and keeps the rule invariant to row order; ``pivot=i`` (an int)
trusts row ``i`` as the paper trusts the worker's own vector (the simulator puts honest rows
first, so ``pivot=0`` is honest there); ``pivot="prev"`` uses the previous aggregate. Ties go to
the lower index; non-finite distances count as +Inf. Needs ``n >= 2f + 1``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.aggregators.aksel_cge import mean_of_smallest
from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.coordinatewise import coordinate_median
from jaxbyz.aggregators.order import materialize
from jaxbyz.aggregators.registry import register
from jaxbyz.validation import invalid, reject_unknown

Array = jax.Array


def _pivot(G: Array, prev: Array | None, pivot: int | str) -> Array:
    if pivot == "median":
        return materialize(coordinate_median(G))  # else fused into every row: n times
    if pivot == "prev":
        return prev
    return G[pivot]


def _monna(
    G: Array, f: int, *, key: Any = None, prev: Any = None, pivot: int | str
) -> tuple[Array, Array]:
    p = _pivot(G, prev, pivot)
    return mean_of_smallest(G, jnp.sum(jnp.square(G - p), axis=1), G.shape[0] - f)


def _monna_check(n: int, f: int, pivot: int | str = "median", **_: Any) -> str | None:
    if n < 2 * f + 1:
        return "monna needs n >= 2f+1"
    if isinstance(pivot, int) and pivot >= n:
        return f"monna needs pivot < n (pivot={pivot})"
    return None


@register("monna")
def monna(pivot: int | str = "median", **unknown: Any) -> Rule:
    """Mean of the ``n - f`` rows nearest to the pivot (see the module docstring).

    Args:
      pivot: ``"median"``, ``"prev"`` or the index of a trusted row.
    """
    reject_unknown("monna", unknown, ("pivot",))
    ok = pivot in ("median", "prev") or (
        isinstance(pivot, int) and not isinstance(pivot, bool) and pivot >= 0
    )
    if not ok:
        fix = "pass 'median', 'prev' or the index (int >= 0) of a trusted row"
        raise invalid("monna", "pivot", pivot, fix)
    return Rule(
        name="monna",
        fn=_monna,
        params={"pivot": pivot},
        check_fn=_monna_check,
        selects=True,
        needs_prev=pivot == "prev",
    )
