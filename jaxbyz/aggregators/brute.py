"""Brute / Minimum-Diameter Averaging (MDA; El Mhamdi et al., 2020; the paper's ``brute``).

Among all subsets ``Q`` of ``n - f`` rows, pick the one of smallest diameter
``max_{i,j ∈ Q} ‖g_i - g_j‖`` (the first in lexicographic order on ties, as
``itertools.combinations`` in the paper's code; subsets holding a non-finite row have an infinite
diameter) and return its mean. Exponential: the ``C(n, f)`` subsets are enumerated statically and
the rule refuses when there are more than ``max_subsets`` (default 10^6). Needs ``n >= 2f + 1``.
Variance-norm bound ``(n - f) / (sqrt(8) f)`` (``+inf`` when ``f = 0``: nothing to tolerate).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.distance import pairwise_sq_distances
from jaxbyz.aggregators.ops import mask_of
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import row_mean
from jaxbyz.validation import integer, reject_unknown

Array = jax.Array
MAX_SUBSETS = 1_000_000
_GATHER_BUDGET = 1 << 22  # distances gathered per batch of subsets


@functools.lru_cache(maxsize=8)
def subsets(n: int, k: int) -> np.ndarray:
    """All ``k``-subsets of ``range(n)`` in lexicographic order, ``[C(n, k), k]`` int32."""
    return np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n), k)),
        dtype=np.int32,
        count=math.comb(n, k) * k,
    ).reshape(-1, k)


def _too_many(n: int, f: int, max_subsets: int) -> str | None:
    count = math.comb(n, f)
    if count > max_subsets:
        return f"brute needs C(n, f) <= max_subsets={max_subsets} subsets (C(n, f)={count})"
    return None


def _brute(
    G: Array, f: int, *, key: Any = None, prev: Any = None, max_subsets: int
) -> tuple[Array, Array]:
    n = G.shape[0]
    message = _too_many(n, f, max_subsets)
    if message is not None:
        raise ValueError(f"{message}, got n={n}, f={f}; use krum or bulyan for this many workers")
    D = pairwise_sq_distances(G)
    candidates = jnp.asarray(subsets(n, n - f))

    def diameter(idx: Array) -> Array:
        return jnp.max(D[idx[:, None], idx[None, :]])

    batch = max(1, _GATHER_BUDGET // (n - f) ** 2)
    diameters = lax.map(diameter, candidates, batch_size=min(batch, candidates.shape[0]))
    best = candidates[jnp.argmin(diameters)]
    return row_mean(jnp.take(G, best, axis=0)), mask_of(best, n)


def _brute_check(n: int, f: int, max_subsets: int = MAX_SUBSETS, **_: Any) -> str | None:
    if n < 2 * f + 1:
        return "brute needs n >= 2f+1"
    return _too_many(n, f, max_subsets)


def _brute_bound(n: int, f: int, d: int, **_: Any) -> float | None:
    return math.inf if f == 0 else (n - f) / (math.sqrt(8) * f)


@register("brute", "mda")
def brute(max_subsets: int = MAX_SUBSETS, **unknown: Any) -> Rule:
    """Minimum-diameter averaging over all ``n-f`` subsets (refused beyond ``max_subsets``)."""
    reject_unknown("brute", unknown, ("max_subsets",))
    max_subsets = integer("brute", "max_subsets", max_subsets, minimum=1)
    return Rule(
        name="brute",
        fn=_brute,
        params={"max_subsets": max_subsets},
        check_fn=_brute_check,
        bound_fn=_brute_bound,
        selects=True,
    )
