"""``empire``: "Fall of Empires", inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019).

As in the paper's code (attacks/identical.py of LPD-EPFL/ByzantineMomentum; El-Mhamdi,
Guerraoui & Rouault, ICLR 2021), the attack direction is ``-mu`` so every Byzantine worker sends

    mu + s x (-mu) = (1 - eps) mu,   eps = s x   (s = -1 when ``negative``),

i.e. Xie et al.'s ``eps`` is the ``factor`` (``-factor`` with ``negative=True``). The paper's
experiments use ``factor=1.1``: the Byzantine workers send ``-0.1 mu``. ``factor`` is a fixed
``x >= 0`` or ``-K`` / ``"adaptive"`` for a searched one (:mod:`jaxbyz.attacks.direction`).
Alias: ``ipm``.

``empire-strict`` is the paper's ``attacks/empire.py``: ``-epsilon mu`` (fixed ``epsilon >= 0``;
``epsilon=-K``/``"adaptive"`` searches ``epsilon >= 0`` with ``K`` rule evaluations).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks import adaptive
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.direction import DEFAULT_STAGES, choose_factor, direction_attack, parse_factor
from jaxbyz.attacks.registry import register
from jaxbyz.rows import broadcast_row, row_mean
from jaxbyz.validation import integer

Array = jax.Array


def minus_mean(H: Array, f: int, key: Array | None) -> Array:
    """``-mu``, the negated coordinate-wise mean of the honest rows."""
    return -row_mean(H)


@register("empire", "ipm")
def empire(
    factor: Any = -adaptive.DEFAULT_EVALS, negative: bool = False, stages: int = DEFAULT_STAGES
) -> Attack:
    """``(1 - eps) mu`` with ``eps = factor`` (``-factor`` when ``negative``)."""
    return direction_attack("empire", minus_mean, factor=factor, negative=negative, stages=stages)


@register("empire-strict")
def empire_strict(epsilon: Any = 1.0, stages: int = DEFAULT_STAGES) -> Attack:
    """``-epsilon mu`` (the paper's attacks/empire.py); ``epsilon=-K`` searches it."""
    mode, _ = parse_factor("empire-strict", epsilon)
    stages = integer("attack empire-strict", "stages", stages, minimum=1)
    return Attack(
        name="empire-strict",
        fn=_strict_fn,
        params={"epsilon": epsilon, "stages": stages},
        needs_rule=mode == "adaptive",
    )


def _strict_fn(
    H: Array, f: int, *, key: Array | None, rule: Any, f_decl: int, epsilon: Any, stages: int
) -> Array:
    if f == 0:
        return jnp.zeros((0, H.shape[1]), H.dtype)
    mu = row_mean(H)
    eps = choose_factor(
        "empire-strict", epsilon, H=H, mu=mu, origin=jnp.zeros_like(mu), direction=-mu, f=f,
        f_decl=f_decl, rule=rule, key=key, stages=stages,
    )  # fmt: skip
    return broadcast_row(-eps * mu, f)
