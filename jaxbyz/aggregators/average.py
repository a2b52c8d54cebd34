"""The average: ``F(g_1..g_n) = (1/n) Σ_i g_i``. Not robust (one vector moves it arbitrarily)."""

from __future__ import annotations

from typing import Any

import jax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import row_mean
from jaxbyz.validation import reject_unknown


def _average(G: jax.Array, f: int, *, key: Any = None, prev: Any = None) -> tuple[jax.Array, None]:
    return row_mean(G), None


@register("average", "mean")
def average(**unknown: Any) -> Rule:
    """The arithmetic mean, computed as a matrix-vector product (fast on CPU); propagates NaN."""
    reject_unknown("average", unknown, ())
    return Rule(name="average", fn=_average)
