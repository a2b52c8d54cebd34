"""Row mixing ``W @ G`` that keeps non-finite rows poisonous.

A plain matrix product ``W @ G`` spreads one NaN row to every output (``0 * NaN = NaN``). Here the
non-finite rows are zeroed before the product and every output row that gives such a row a
non-zero weight is set to NaN afterwards, exactly as the mixture would be in exact arithmetic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbyz.rows import HIGHEST, row_finite

Array = jax.Array


def mix_rows(W: Array, G: Array) -> Array:
    """``W @ G`` (``W`` ``[k, n]`` non-negative), NaN on the rows that mix a non-finite row."""
    finite = row_finite(G)
    out = jnp.dot(W.astype(G.dtype), jnp.where(finite[:, None], G, 0.0), precision=HIGHEST)
    poisoned = jnp.dot(W, (~finite).astype(W.dtype), precision=HIGHEST) > 0
    return jnp.where(poisoned[:, None], jnp.nan, out)
