"""Aksel (the paper's code) and Comparative Gradient Elimination (CGE; Liu, Gupta & Vaidya, 2021).

- aksel: rank the rows by their squared distance ``‖g_i - med‖²`` to the coordinate-wise median
  and average the ``c`` closest, ``c = ⌊(n+1)/2⌋`` (``mode="mid"``) or ``n - f``
  (``mode="n-f"``). Needs ``n >= 2f + 1``.
- cge: average the ``n - f`` rows of smallest norm. Needs ``n >= f + 1``.

Ties go to the lower index (the paper's stable sorts); a non-finite distance or norm counts as
+Inf. CGE ranks by squared norm, which orders rows as the norm does without rounding the norm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.coordinatewise import coordinate_median
from jaxbyz.aggregators.ops import mask_of, nan_to_inf, weighted_rows
from jaxbyz.aggregators.order import materialize
from jaxbyz.aggregators.registry import register
from jaxbyz.validation import boolean, choice, reject_unknown

Array = jax.Array
AKSEL_MODES = ("mid", "n-f")


def mean_of_smallest(G: Array, keys: Array, c: int) -> tuple[Array, Array]:
    """Mean of the ``c`` rows of smallest ``keys`` (NaN as +Inf, ties: lower index) and the mask."""
    chosen = jnp.argsort(nan_to_inf(keys), stable=True)[:c]
    accepted = mask_of(chosen, G.shape[0])
    # a row with a non-finite value has a non-finite key
    return weighted_rows(accepted[None] / c, G, chosen, jnp.isfinite(keys))[0], accepted


def _aksel(
    G: Array, f: int, *, key: Any = None, prev: Any = None, mode: str, lower: bool
) -> tuple[Array, Array]:
    n = G.shape[0]
    c = (n + 1) // 2 if mode == "mid" else n - f
    med = materialize(coordinate_median(G, lower))  # else fused into every row: n times
    return mean_of_smallest(G, jnp.sum(jnp.square(G - med), axis=1), c)


def _cge(G: Array, f: int, *, key: Any = None, prev: Any = None) -> tuple[Array, Array]:
    return mean_of_smallest(G, jnp.sum(jnp.square(G), axis=1), G.shape[0] - f)


def _aksel_check(n: int, f: int, **_: Any) -> str | None:
    return "aksel needs n >= 2f+1" if n < 2 * f + 1 else None


def _cge_check(n: int, f: int, **_: Any) -> str | None:
    return "cge needs n >= f+1" if n < f + 1 else None


@register("aksel")
def aksel(mode: str = "mid", lower: bool = True, **unknown: Any) -> Rule:
    """Average of the rows closest to the coordinate-wise median.

    Args:
      mode: ``"mid"`` averages the ``⌊(n+1)/2⌋`` closest rows, ``"n-f"`` the ``n - f`` closest.
      lower: median convention with an even count (True: lower middle value, as torch.median).
    """
    reject_unknown("aksel", unknown, ("mode", "lower"))
    mode = choice("aksel", "mode", mode, AKSEL_MODES)
    lower = boolean("aksel", "lower", lower)
    return Rule(
        name="aksel",
        fn=_aksel,
        params={"mode": mode, "lower": lower},
        check_fn=_aksel_check,
        selects=True,
    )


@register("cge")
def cge(**unknown: Any) -> Rule:
    """Comparative Gradient Elimination: average of the ``n - f`` smallest-norm rows."""
    reject_unknown("cge", unknown, ())
    return Rule(name="cge", fn=_cge, check_fn=_cge_check, selects=True)
