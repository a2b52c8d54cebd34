"""Byzantine attacks: ``attacks.get(name, **params)`` -> :class:`Attack`.

``atk(H, f, key=key, rule=rule, f_decl=f_decl)`` maps the ``[h, d]`` honest submissions to the
``[f, d]`` Byzantine vectors. Names follow the paper's code (LPD-EPFL/ByzantineMomentum);
literature names are aliases (``alie`` -> ``little``, ``ipm`` -> ``empire``, ...).

In the step (:mod:`jaxbyz.simulator`), an attack sits between the workers' stage and the rule:
it reads the honest submissions as sent (momentum included where it applies) and writes the
Byzantine rows; a data-poisoning attack (``Attack.poison``) acts earlier, on its workers'
batches in the gradient stage.
"""

from __future__ import annotations

from typing import Any

from jaxbyz.attacks import (  # noqa: F401  (each family module registers its attacks)
    anticge,
    bulyan,
    dissensus,
    empire,
    fang,
    labelflip,
    little,
    minmax,
    nonfinite,
    optimized,
    simple,
)
from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.direction import direction_attack
from jaxbyz.attacks.registry import PARAMS, REGISTRY, build

__all__ = ["REGISTRY", "Attack", "aliases", "direction_attack", "get", "names", "parameters"]


def get(name: str, **params: Any) -> Attack:
    """The attack ``name`` (or an alias) built with ``params``; unknown names raise ValueError."""
    return build(name, **params)


def names() -> list[str]:
    """The canonical attack names, sorted."""
    return REGISTRY.names()


def parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters of attack ``name`` (or an alias)."""
    return PARAMS[REGISTRY.canonical(name)]


def aliases() -> dict[str, str]:
    """Alias -> canonical attack name."""
    return REGISTRY.aliases()
