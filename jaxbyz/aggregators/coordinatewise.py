"""Coordinate-wise rules: median, trimmed mean, Phocas and MeaMed.

Each acts on every coordinate (column of ``G``) independently; ``x_(r)`` is the ``r``-th smallest
(0-based) of the ``n`` values of a coordinate. NaN counts as +Inf, so that at most ``f``
non-finite rows always land among the extremes that the rules discard.

- median (Yin et al., ICML 2018): ``x_(⌊(n-1)/2⌋)``, the lower middle value when ``n`` is even as
  ``torch.median`` in the paper's code, or with ``lower=False`` the mean of the two middle values.
- trmean (Yin et al., ICML 2018): ``(1/(n-2f)) Σ_{f <= r < n-f} x_(r)``.
- phocas (Xie et al., 2018): the mean of the ``n-f`` values closest to the trimmed mean.
- meamed (Xie et al., 2018): the mean of the ``n-f`` values closest to the median.

"Closest" breaks ties towards the smaller value (``torch.topk`` leaves them unspecified).
"""

from __future__ import annotations

import math
from typing import Any

import jax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.ops import nan_to_inf
from jaxbyz.aggregators.order import (
    NETWORK_MAX_ROWS,
    closest_mean,
    columnwise,
    median_ranks,
    median_rows,
    order_statistics,
    sum_ranks,
    window_bounds,
    window_mean,
)
from jaxbyz.aggregators.registry import register
from jaxbyz.validation import boolean, reject_unknown

Array = jax.Array


def coordinate_median(X: Array, lower: bool = True) -> Array:
    """Coordinate-wise median of the rows of ``X`` ``[n, d]`` (NaN counts as +Inf)."""
    return columnwise(lambda B: _median_block(B, lower, nan_as_inf=True), X)


def trimmed_mean(X: Array, f: int) -> Array:
    """``(1/(n-2f)) Σ_{f <= r < n-f} x_(r)`` per coordinate (NaN counts as +Inf)."""
    return columnwise(lambda B: _trmean_block(B, f, nan_as_inf=True), X)


def _median_block(X: Array, lower: bool, nan_as_inf: bool = False) -> Array:
    """The median of a block; ``nan_as_inf``: NaN counts as +Inf inside the selection (no
    replaced copy of the block is written first)."""
    n = X.shape[0]
    ranks = median_ranks(n, lower)
    return median_rows(order_statistics(X, ranks, nan_as_inf=nan_as_inf), n, lower)


def _trmean_block(X: Array, f: int, nan_as_inf: bool = False) -> Array:
    """The trimmed mean of a block (``nan_as_inf`` as for :func:`_median_block`)."""
    n = X.shape[0]
    S = order_statistics(X, range(f, n - f), nan_as_inf=nan_as_inf)
    return sum_ranks(S, f, n - f) / (n - 2 * f)


SHORT_WINDOW = 3


def short_window(n: int, m: int, lower: bool) -> bool:
    """Whether the ``m`` values closest to the median of ``n`` are cheaper found around the
    median in one fused network (few candidate windows) than by ranking distances."""
    kmin, kmax = window_bounds(n, m, median_ranks(n, lower))
    return n <= NETWORK_MAX_ROWS and kmax - kmin <= SHORT_WINDOW


def median_window_of_rows(rows: list[Array], m: int, lower: bool) -> Array:
    """Mean of the ``m`` values closest to the median of the ``n`` lazy ``rows`` (short window)."""
    n = len(rows)
    mid = median_ranks(n, lower)
    kmin, kmax = window_bounds(n, m, mid)
    S = order_statistics([nan_to_inf(row) for row in rows], (*mid, *range(kmin, kmax + m)))
    return window_mean(S, median_rows(S, n, lower), m, kmin, kmax)


def closest_to_median(X: Array, m: int, lower: bool) -> Array:
    """Per coordinate, the mean of the ``m`` values closest to the median (NaN counts as +Inf).

    The window of the ``m`` closest holds the median, so it starts in a range given by
    :func:`window_bounds`; when that range is short (Bulyan's few ``β`` values) one fused
    network gives the ranks around the median, else :func:`closest_mean` ranks distances.
    """
    n = X.shape[0]
    if short_window(n, m, lower):
        return median_window_of_rows([X[i] for i in range(n)], m, lower)

    def block(B: Array) -> Array:
        return closest_mean(nan_to_inf(B), _median_block(B, lower, nan_as_inf=True), m)

    return columnwise(block, X)


def _median(G: Array, f: int, *, key: Any = None, prev: Any = None, lower: bool) -> tuple:
    return coordinate_median(G, lower), None


def _trmean(G: Array, f: int, *, key: Any = None, prev: Any = None) -> tuple:
    return trimmed_mean(G, f), None


def _phocas(G: Array, f: int, *, key: Any = None, prev: Any = None) -> tuple:
    def block(B: Array) -> Array:
        return closest_mean(nan_to_inf(B), _trmean_block(B, f, nan_as_inf=True), B.shape[0] - f)

    return columnwise(block, G), None


def _meamed(G: Array, f: int, *, key: Any = None, prev: Any = None, lower: bool) -> tuple:
    return closest_to_median(G, G.shape[0] - f, lower), None


def _median_bound(n: int, f: int, d: int, **_: Any) -> float | None:
    return 1.0 / math.sqrt(n - f) if n > f else None


def _majority_check(name: str):
    def check(n: int, f: int, **_: Any) -> str | None:
        return f"{name} needs n >= 2f+1" if n < 2 * f + 1 else None

    return check


@register("median", "cm")
def median(lower: bool = True, **unknown: Any) -> Rule:
    """Coordinate-wise median; variance-norm bound ``1/sqrt(n-f)`` (El-Mhamdi et al., 2021).

    Defined for any ``n >= 1`` as in the paper's code; it tolerates ``f`` Byzantine rows only
    when ``n >= 2f+1``.

    Args:
      lower: with an even count, take the lower middle value (as the paper's code) when True,
        else the mean of the two middle values.
    """
    reject_unknown("median", unknown, ("lower",))
    lower = boolean("median", "lower", lower)
    return Rule(name="median", fn=_median, params={"lower": lower}, bound_fn=_median_bound)


@register("trmean", "tm", "trimmed-mean")
def trmean(**unknown: Any) -> Rule:
    """Coordinate-wise trimmed mean: drop the ``f`` largest and ``f`` smallest values."""
    reject_unknown("trmean", unknown, ())
    return Rule(name="trmean", fn=_trmean, check_fn=_majority_check("trmean"))


@register("phocas")
def phocas(**unknown: Any) -> Rule:
    """Phocas: per coordinate, the mean of the ``n-f`` values closest to the trimmed mean."""
    reject_unknown("phocas", unknown, ())
    return Rule(name="phocas", fn=_phocas, check_fn=_majority_check("phocas"))


@register("meamed")
def meamed(lower: bool = True, **unknown: Any) -> Rule:
    """MeaMed: per coordinate, the mean of the ``n-f`` values closest to the median.

    Args:
      lower: median convention with an even count (see ``median``).
    """
    reject_unknown("meamed", unknown, ("lower",))
    lower = boolean("meamed", "lower", lower)
    return Rule(
        name="meamed", fn=_meamed, params={"lower": lower}, check_fn=_majority_check("meamed")
    )
