"""FLTrust (Cao, Fang, Liu & Gong, NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via
Trust Bootstrapping").

The server holds a small clean "root" data set and computes its own gradient ``g_0`` on it at
every step (the simulator does: ``reference_size`` examples drawn once per run from the training
set). Each received row gets the trust score ``TS_i = ReLU(cos(g_i, g_0))``, is rescaled to the
server's norm, and the aggregate is the trust-weighted mean:

    g = (Σ_i TS_i (‖g_0‖ / ‖g_i‖) g_i) / Σ_j TS_j.

A row pointing away from ``g_0`` (cosine <= 0) gets no weight; a row with a large norm gets no
more than ``‖g_0‖``. ``f`` plays no part: the rule's robustness comes from the root set, not from
a count (any ``f < n``). A row holding a non-finite value, and a zero row, get no weight; when
no row has a positive score the aggregate is zero (the paper's ``1/Σ TS`` is undefined). The
accepted "mask" is the normalised trust ``TS_i / max_j TS_j``. Checked against the paper's
Algorithm 1 and the NDSS21 authors' description; ``root_size`` defaults to 100 (the paper's
root data set has 100 examples).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.registry import register
from jaxbyz.rows import HIGHEST, row_finite, row_norms, row_weighted_sum
from jaxbyz.validation import integer, reject_unknown

Array = jax.Array


def trust_scores(G: Array, reference: Array) -> tuple[Array, Array]:
    """``(TS [n], U [n, d])``: the trust ``ReLU(cos(g_i, g_0))`` (0 for non-finite or zero rows)
    and the rows as unit vectors ``g_i / ‖g_i‖`` (zero rows for non-finite ones; norms computed
    without overflow)."""
    finite = row_finite(G)
    G = jnp.where(finite[:, None], G, 0.0)
    norms = row_norms(G)
    directions = G / jnp.maximum(norms, 1e-30)[:, None]
    ref_norm = row_norms(reference[None])[0]
    cosine = jnp.dot(directions, reference / jnp.maximum(ref_norm, 1e-30), precision=HIGHEST)
    scores = jnp.where(finite & (norms > 0), jax.nn.relu(cosine), 0.0)
    return scores, directions


def _fltrust(
    G: Array, f: int, *, key: Any = None, prev: Any = None, reference: Array, root_size: int
) -> tuple[Array, Array]:
    scores, directions = trust_scores(G, reference)
    total = jnp.sum(scores)
    # Σ TS_i (‖g_0‖ / ‖g_i‖) g_i = ‖g_0‖ Σ TS_i u_i
    weighted = row_weighted_sum(scores, directions) * row_norms(reference[None])[0]
    aggregate = weighted / jnp.where(total > 0, total, 1.0)
    accepted = scores / jnp.maximum(jnp.max(scores), 1e-30)
    return aggregate.astype(G.dtype), accepted


@register("fltrust")
def fltrust(root_size: int = 100, **unknown: Any) -> Rule:
    """Trust-weighted mean by cosine with the server's gradient on ``root_size`` examples."""
    reject_unknown("fltrust", unknown, ("root_size",))
    root_size = integer("fltrust", "root_size", root_size, minimum=1)
    return Rule(
        name="fltrust",
        fn=_fltrust,
        params={"root_size": root_size},
        selects=True,
        reference_size=root_size,
    )
