"""``nan`` and ``inf``: non-finite Byzantine vectors.

``nan`` is the paper's attacks/nan.py (every coordinate NaN); ``inf`` sends ``+inf`` everywhere
(``-inf`` with ``negative=True``). Robust rules must return a finite aggregate while at most
``f`` inputs are non-finite; the average does not.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.validation import boolean

Array = jax.Array


def _fill(H: Array, f: int, value: Any) -> Array:
    return jnp.full((f, H.shape[1]), value, H.dtype)


def _nan_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int) -> Array:
    return _fill(H, f, jnp.nan)


def _inf_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, negative: Any) -> Array:
    return _fill(H, f, jnp.where(negative, -jnp.inf, jnp.inf))


@register("nan")
def nan() -> Attack:
    """Every Byzantine coordinate is NaN."""
    return Attack(name="nan", fn=_nan_fn)


@register("inf")
def inf(negative: bool = False) -> Attack:
    """Every Byzantine coordinate is ``+inf`` (``-inf`` when ``negative``)."""
    negative = boolean("attack inf", "negative", negative, allow_array=True)
    return Attack(name="inf", fn=_inf_fn, params={"negative": negative})
