"""``little``: "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

Every Byzantine worker sends ``mu + s x sigma``, ``mu`` and ``sigma`` the coordinate-wise mean
and unbiased standard deviation of the honest submissions, ``s = -1`` when ``negative``. As in
the paper's code (attacks/identical.py of LPD-EPFL/ByzantineMomentum; El-Mhamdi, Guerraoui &
Rouault, ICLR 2021), ``factor`` is a fixed ``x >= 0``, or ``-K`` / ``"adaptive"`` for a searched
``x`` (see :mod:`jaxbyz.attacks.direction`); the paper's experiments use ``factor=1.5,
negative=True``. ``factor="auto"`` is Baruch et al.'s

    s = floor(n/2 + 1) - f_decl,   z_max = Phi^-1((n - s) / n),

with ``n = h + f`` the number of rows the rule receives and ``f_decl`` the declared count (not
the real one). Alias: ``alie``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import jax

from jaxbyz.attacks import adaptive
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.direction import DEFAULT_STAGES, direction_attack
from jaxbyz.attacks.registry import register
from jaxbyz.attacks.statistics import mean_std

Array = jax.Array


def sigma_direction(H: Array, f: int, key: Array | None) -> Array:
    """The coordinate-wise unbiased standard deviation of the honest rows."""
    return mean_std(H)[1]


def z_max(n: int, f_decl: int) -> float:
    """Baruch et al.'s ``z_max = Phi^-1((n - s)/n)``, ``s = floor(n/2 + 1) - f_decl``."""
    s = math.floor(n / 2 + 1) - f_decl
    if s <= 0:
        raise ValueError(
            f"attack little: factor='auto' needs floor(n/2 + 1) - f_decl > 0, got n={n}, "
            f"f_decl={f_decl}; fix: declare fewer Byzantine workers or give a fixed factor"
        )
    return NormalDist().inv_cdf((n - s) / n)


@register("little", "alie")
def little(
    factor: Any = -adaptive.DEFAULT_EVALS, negative: bool = False, stages: int = DEFAULT_STAGES
) -> Attack:
    """``mu + s x sigma``: fixed ``factor >= 0``, ``-K``/``"adaptive"`` (searched), ``"auto"``."""
    return direction_attack(
        "little", sigma_direction, factor=factor, negative=negative, stages=stages,
        auto_factor=z_max,
    )  # fmt: skip
