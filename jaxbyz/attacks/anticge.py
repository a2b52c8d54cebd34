"""``anticge``: the attack of the paper's code against CGE, the "comparative gradient
elimination" rule that averages the ``n - f`` submissions of smallest norm (attacks/anticge.py of
LPD-EPFL/ByzantineMomentum; El-Mhamdi, Guerraoui & Rouault, ICLR 2021).

Sort the honest rows by norm (a non-finite norm counts as ``+inf``), ``g_(0), g_(1), ...``, and
let ``p = h - f_decl``. A Byzantine vector strictly shorter than ``g_(p)`` is always selected, so
every Byzantine worker sends

    byz = -r a / ||a||,   a = g_(0) + sum_{i < p} g_(i),   r = ||g_(p)|| (1 - margin),

the longest vector pointing against the sum of the honest rows CGE would keep. As in the paper's
code, ``g_(0)`` counts twice in ``a`` (its sum starts from ``g_(0)`` and then adds the ``p``
shortest). The paper shortens ``r`` by one float64 ulp (``math.nextafter``), which float32
rounding of the norms can undo; ``margin`` (default ``1e-5``, relative) keeps it strictly below.
If ``f > f_decl`` every Byzantine coordinate is NaN, as in the paper's code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.rows import broadcast_row, row_weighted_sum
from jaxbyz.validation import number

Array = jax.Array


def _anticge_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, margin: Any) -> Array:
    h, d = H.shape
    if f > f_decl:
        return jnp.full((f, d), jnp.nan, H.dtype)
    p = h - f_decl
    if p < 0:
        raise ValueError(
            f"attack anticge: needs at least f_decl={f_decl} honest rows, got h={h}; "
            "fix: add workers or declare fewer Byzantine ones"
        )
    norms = jnp.sqrt(jnp.sum(H * H, axis=1))
    norms = jnp.where(jnp.isfinite(norms), norms, jnp.inf)
    order = jnp.argsort(norms)
    weights = jnp.zeros((h,), H.dtype).at[order[:p]].set(1.0).at[order[0]].add(1.0)
    a = row_weighted_sum(weights, jnp.where(weights[:, None] > 0, H, 0.0))
    radius = norms[order[p]] * (1.0 - jnp.asarray(margin, H.dtype))
    a_norm = jnp.linalg.norm(a)
    scale = jnp.where(a_norm > 0, -radius / jnp.where(a_norm > 0, a_norm, 1.0), 1.0)
    return broadcast_row(scale * a, f)


@register("anticge")
def anticge(margin: Any = 1e-5) -> Attack:
    """``-r a/||a||`` just shorter than the ``(h - f_decl)``-th shortest honest row."""
    margin = number("attack anticge", "margin", margin, minimum=0, below=1, allow_array=True)
    return Attack(name="anticge", fn=_anticge_fn, params={"margin": margin})
