"""``bulyan``: the single-coordinate attack of "The Hidden Vulnerability of Distributed Learning
in Byzantium" (El Mhamdi, Guerraoui & Rouault, ICML 2018), as in the paper's code
(attacks/identical.py of LPD-EPFL/ByzantineMomentum; ICLR 2021).

Every Byzantine worker sends ``mu + s x e_t``: the honest mean with one coordinate ``t``
(``target_idx``, default ``-1``: the last) moved by ``x``; ``target_idx="all"`` moves every
coordinate (direction ``1_d``). ``factor``/``negative``/``stages`` as for every direction attack
(:mod:`jaxbyz.attacks.direction`): fixed ``x >= 0``, or ``-K``/``"adaptive"`` (default ``-16``)
for the ``x`` maximising ``||GAR - mu||²``. Alias: ``hidden``.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks import adaptive
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.direction import DEFAULT_STAGES, direction_attack
from jaxbyz.attacks.registry import register
from jaxbyz.validation import invalid

Array = jax.Array


def coordinate_direction(H: Array, f: int, key: Array | None, *, target_idx: Any) -> Array:
    """``e_t`` (``1_d`` when ``target_idx="all"``); Python-style negative ``t`` allowed."""
    d = H.shape[1]
    if target_idx == "all":
        return jnp.ones((d,), H.dtype)
    if not -d <= target_idx < d:
        raise ValueError(
            f"attack bulyan: target_idx={target_idx} is out of range for dimension {d}; "
            f"fix: pass an index in [-{d}, {d}) or 'all'"
        )
    return jnp.zeros((d,), H.dtype).at[target_idx].set(1.0)


@register("bulyan", "hidden")
def bulyan(
    factor: Any = -adaptive.DEFAULT_EVALS,
    negative: bool = False,
    target_idx: Any = -1,
    stages: int = DEFAULT_STAGES,
) -> Attack:
    """``mu + s x e_t`` (``target_idx``: an integer or ``"all"``)."""
    if isinstance(target_idx, str) and target_idx.strip().lower() == "all":
        target_idx = "all"
    elif isinstance(target_idx, bool) or not isinstance(target_idx, numbers.Integral):
        raise invalid("attack bulyan", "target_idx", target_idx, "pass an integer or 'all'")
    return direction_attack(
        "bulyan", coordinate_direction, factor=factor, negative=negative, stages=stages,
        target_idx=target_idx if target_idx == "all" else int(target_idx),
    )  # fmt: skip
