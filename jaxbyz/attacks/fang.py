"""``fang-krum`` and ``fang-trmean``: the full-knowledge attacks of Fang, Cao, Jia & Gong, "Local
Model Poisoning Attacks to Byzantine-Robust Federated Learning" (USENIX Security 2020), in
gradient space: the attack sees the ``h`` honest rows ``h_i`` (``[h, d]``), ``mu`` their mean.

The paper crafts local *models* ``w'`` around the global model ``w_Re`` received this round, ``s``
the sign of the change of the global model without attack. With one local SGD step a model is
``w_Re - lr g``, so ``w_Re`` is the zero gradient, ``s = -sign(mu)`` and ``w_Re - lambda s`` is the
gradient ``-(lambda / lr) sign(mu)``; a model distance is ``lr`` times the gradient distance and
the bounds below carry over with ``lr`` divided out.

**fang-krum** (the paper's attack on Krum). Every Byzantine row is ``-lambda sign(mu)``, as exact
copies (no key): the paper samples the ``f - 1`` supporters in a small ball around the first
one; NDSS21 and FLPoison (below) send copies, as here. ``lambda`` starts at the paper's upper
bound

    lambda_0 = min_i sum_{l in N_i} ||h_l - h_i|| / ((h - f - 1) sqrt(d)) + max_i ||h_i|| / sqrt(d)

(``N_i`` the ``h - f - 2`` honest rows nearest ``h_i``, Euclidean distances, ``f`` the real
number of attackers: the paper's ``m - 2c - 2`` and ``m - 2c - 1`` with ``m = h + f`` workers,
``c = f``), and is halved while it exceeds ``threshold`` (1e-5) until our Krum
(``aggregators.get("krum", m=1)``, told ``f_decl``, on the rows in the simulator's order: the
``h`` honest ones, then the ``f`` Byzantine ones) selects a Byzantine row. When no ``lambda``
above the threshold succeeds, the rows are ``mu - lambda sign(mu)`` with the last
(sub-threshold) ``lambda``, as in NDSS21.

Checked against ``compute_lambda_fang`` / ``get_malicious_updates_fang`` in the notebooks of
vrt1shjwlkr/NDSS21-Model-Poisoning (Shejwalkar & Houmansadr, NDSS 2021), ``krum_attack`` of
encryptogroup/SAFEFL (``attacks.py``) and ``attackers/fangattack.py`` of vio1etus/FLPoison.
Differences: NDSS21 measures the second term of ``lambda_0`` as ``max_i ||h_i - mu||`` (its
``model_re`` is ``mu`` while its crafted vector is centred at 0); SAFEFL and we keep the paper's
``D(w_i, w_Re)``, i.e. ``||h_i||``, consistent with the crafted vector. NDSS21 runs its own Krum
(squared distances, Byzantine rows first) and SAFEFL sums ``h - 1`` neighbour distances in the
bound; FLPoison starts at ``lambda = 1`` and returns ``-lambda s`` when the search fails.

**fang-trmean** (the paper's attack on the trimmed mean and the median). Per coordinate ``j``,
``g_max,j`` and ``g_min,j`` the largest and smallest honest values, the Byzantine values are drawn
independently and uniformly (with ``key``) from

- ``[g_min,j / b, g_min,j]`` if ``mu_j > 0`` and ``g_min,j > 0``, ``[b g_min,j, g_min,j]`` if
  ``mu_j > 0`` and ``g_min,j <= 0``;
- ``[g_max,j, b g_max,j]`` if ``mu_j < 0`` and ``g_max,j > 0``, ``[g_max,j, g_max,j / b]`` if
  ``mu_j < 0`` and ``g_max,j <= 0``;
- ``{0}`` if ``mu_j = 0``,

``b = 2`` (the paper's ``b``): the paper's intervals ("``[w_max,j, b w_max,j]`` or
``[w_max,j / b, w_max,j]`` when ``s_j = -1``, the mirrored ones at ``w_min,j`` when ``s_j = 1``")
mapped to gradients (``s_j = -sign(mu_j)``; a large model value is a small gradient value).
Checked against ``trim_attack`` of encryptogroup/SAFEFL (``attacks.py``) and an MXNet
``full_trim`` of the same formula found in several public repositories, which draw ``g / r``
and ``g r`` with ``r`` uniform in ``[1, 2]`` (so ``g / r`` is not uniform on its interval: we draw
uniformly, as the paper writes) and send 0 where ``mu_j = 0``.
``get_malicious_updates_fang_trmean`` of NDSS21 draws uniformly but tests ``deviation > 0`` in
both of its cases (coordinates with ``mu_j <= 0`` get 0) and applies the model-space rule to
gradients (values above ``g_max`` where ``mu_j > 0``); we do not follow it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz import aggregators
from jaxbyz.aggregators.distance import pairwise_distances
from jaxbyz.aggregators.krum import krum_scores
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.rows import broadcast_row, row_mean, row_norms
from jaxbyz.validation import number

Array = jax.Array

THRESHOLD = 1e-5
B = 2.0


# ---------------------------------------------------------------------------------------------- #
# fang-krum


def lambda_bound(H: Array, f: int) -> Array:
    """The paper's upper bound ``lambda_0`` on ``lambda`` (module docstring), in gradient space."""
    h, d = H.shape
    k = h - f - 2
    term = jnp.zeros((), H.dtype)
    if k >= 1:
        D = pairwise_distances(H - row_mean(H))  # centred: an accurate Gram product
        term = jnp.min(krum_scores(D, k)) / ((h - f - 1) * math.sqrt(d))
    return term + jnp.max(row_norms(H)) / math.sqrt(d)


def krum_lambda(H: Array, f: int, f_decl: int, threshold: Any) -> tuple[Array, Array]:
    """``(lambda, success)``: ``lambda_0`` halved while above ``threshold`` until Krum (``m=1``,
    told ``f_decl``) selects one of the ``f`` copies of ``-lambda sign(mu)`` appended to ``H``;
    ``success`` False when it never did (``lambda`` is then the first one at most ``threshold``)."""
    h = H.shape[0]
    n = h + f
    rule = aggregators.get("krum", m=1)
    if n < 2 * f_decl + 3:
        raise ValueError(
            f"attack fang-krum: its Krum needs n >= 2 f_decl + 3, got n={n} rows (h={h} honest, "
            f"f={f} Byzantine) and f_decl={f_decl}; fix: add workers or declare fewer Byzantine"
        )
    s = jnp.sign(row_mean(H))
    threshold = jnp.asarray(threshold, H.dtype)

    def selected(lam: Array) -> Array:
        G = jnp.concatenate([H, broadcast_row(-lam * s, f)])
        accepted = rule.aggregate(G, f_decl)[1]
        return jnp.any(accepted[h:] > 0)

    def cond(carry: tuple[Array, Array]) -> Array:
        lam, done = carry
        return (lam > threshold) & ~done

    def body(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        lam, _ = carry
        done = selected(lam)
        return jnp.where(done, lam, lam / 2), done

    start = (lambda_bound(H, f).astype(H.dtype), jnp.zeros((), bool))
    return lax.while_loop(cond, body, start)


def _krum_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, threshold: Any) -> Array:
    if f == 0:
        return jnp.zeros((0, H.shape[1]), H.dtype)
    lam, success = krum_lambda(H, f, f_decl, threshold)
    mu = row_mean(H)
    row = jnp.where(success, 0.0, mu) - lam * jnp.sign(mu)
    return broadcast_row(row, f)


@register("fang-krum", "full-krum")
def fang_krum(threshold: Any = THRESHOLD) -> Attack:
    """Fang et al.'s full-knowledge attack on Krum: ``f`` copies of ``-lambda sign(mu)``.

    Args:
      threshold: ``lambda`` is halved from the paper's bound while above it (> 0; the paper's
        1e-5).
    """
    threshold = number("attack fang-krum", "threshold", threshold, above=0, allow_array=True)
    return Attack(
        name="fang-krum", fn=_krum_fn, params={"threshold": threshold}, min_workers=(2, 3)
    )


# ---------------------------------------------------------------------------------------------- #
# fang-trmean


def trmean_intervals(H: Array, b: Any) -> tuple[Array, Array]:
    """``(lo, hi)`` ``[d]``: the interval each Byzantine coordinate is drawn from (module doc)."""
    g_max, g_min = jnp.max(H, axis=0), jnp.min(H, axis=0)
    mu = row_mean(H)
    # mu_j > 0: at or below g_min; mu_j < 0: at or above g_max; mu_j = 0: 0
    low_end = jnp.where(g_min > 0, g_min / b, b * g_min)
    high_end = jnp.where(g_max > 0, b * g_max, g_max / b)
    lo = jnp.where(mu > 0, low_end, jnp.where(mu < 0, g_max, 0.0))
    hi = jnp.where(mu > 0, g_min, jnp.where(mu < 0, high_end, 0.0))
    return lo, hi


def trmean_rows(H: Array, u: Array, b: Any) -> Array:
    """The Byzantine rows ``lo + u (hi - lo)`` from uniforms ``u`` ``[f, d]`` in ``[0, 1)``."""
    lo, hi = trmean_intervals(H, b)
    return lo + u * (hi - lo)


def _trmean_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, b: Any) -> Array:
    if f == 0:
        return jnp.zeros((0, H.shape[1]), H.dtype)
    u = jax.random.uniform(key, (f, H.shape[1]), H.dtype)
    return trmean_rows(H, u, jnp.asarray(b, H.dtype))


@register("fang-trmean", "full-trim", "fang-trim")
def fang_trmean(b: Any = B) -> Attack:
    """Fang et al.'s full-knowledge attack on the trimmed mean and the median (module doc).

    Args:
      b: the interval factor (>= 1; the paper's 2): values drawn beyond the honest extreme,
        up to ``b`` times it (or ``1/b`` times it, by its sign).
    """
    b = number("attack fang-trmean", "b", b, minimum=1, allow_array=True)
    return Attack(name="fang-trmean", fn=_trmean_fn, params={"b": b}, needs_key=True)
