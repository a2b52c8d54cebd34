"""Structure choices as traced data: runs that differ only in them share one compiled program.

Three choices of a run change no array shape, only which arithmetic a step does:

- the momentum placement (``update``, ``worker``, ``server``; El-Mhamdi, Guerraoui & Rouault,
  ICLR 2021, Section 3): one composition computes the three worker-side and server-side stages
  and keeps the chosen one's result and state (:func:`jaxbyz.momentum.compose_traced`);
- Nesterov: the gradients are taken at ``θ`` or at the look-ahead point, chosen by a flag;
- the attack within the *moment family*, the attacks whose Byzantine row is
  ``mu + a sigma + b mu`` (``mu``, ``sigma`` the coordinate-wise mean and unbiased standard
  deviation of the honest submissions) with fixed coefficients: ``little`` with a fixed factor
  ``x`` is ``a = s x, b = 0`` (Baruch et al., NeurIPS 2019), ``empire`` is ``a = 0, b = -s x``
  (Xie et al., UAI 2019), ``s = -1`` when ``negative``.

A sweep groups runs whose configurations differ only in these (and in traced numbers, see
:class:`jaxbyz.config.HyperParams`) into one program; :class:`Traced` says which of the three vary
within the group, and only those are traced (a group where every run has the same placement
compiles the dedicated program, which keeps no unused state). Their values travel in
``HyperParams.structure`` (:func:`values`), so ``vmap`` runs them side by side.

Not traceable: the placement of data-poisoning attacks (their own workers run the placement's
worker stage), and attacks outside the moment family or with a searched factor (``-K``,
``"adaptive"``, ``"auto"``): those stay static fields of the program.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jaxbyz.attacks.base import Attack
    from jaxbyz.config import Config

PLACEMENT_CODES = {"update": 0, "worker": 1, "server": 2}
MOMENT_ATTACKS = ("little", "empire")
# the fields of ``identity_dict(config)`` each traced choice stands for
FIELDS = {
    "placement": ("momentum_at",),
    "nesterov": ("momentum_nesterov",),
    "attack": ("attack", "attack_args"),
}


@dataclasses.dataclass(frozen=True)
class Traced:
    """Which structure choices a program takes as traced values (the others are static)."""

    placement: bool = False
    nesterov: bool = False
    attack: bool = False

    def __bool__(self) -> bool:
        return self.placement or self.nesterov or self.attack

    def describe(self) -> str:
        """``"placement, nesterov"``: the traced choices, or ``"none"``."""
        names = [name for name in FIELDS if getattr(self, name)]
        return ", ".join(names) or "none"


STATIC = Traced()  # every choice static: the dedicated program


def attack_moments(name: str, params: dict[str, Any]) -> tuple[float, float] | None:
    """``(a, b)`` of an attack of the moment family sending ``mu + a sigma + b mu``, or None when
    ``name`` with ``params`` (the built attack's ``Attack.params``) is not one with a fixed
    factor."""
    from jaxbyz.attacks.direction import parse_factor

    if name not in MOMENT_ATTACKS:
        return None
    factor, negative = params.get("factor"), params.get("negative", False)
    if not isinstance(negative, bool | np.bool_):
        return None
    try:
        mode, value = parse_factor(name, factor)
    except ValueError:
        return None
    if mode != "fixed" or not isinstance(value, float):
        return None
    signed = -value if negative else value
    return (signed, 0.0) if name == "little" else (0.0, -signed)


def traceable(config: Config) -> Traced:
    """The structure choices of ``config`` that a shared program could take as traced values
    (all False for a configuration whose attack cannot be built: it fails on its own)."""
    from jaxbyz import attacks

    try:
        attack = attacks.get(config.attack, **config.attack_args)
    except (ValueError, TypeError):
        return STATIC
    poisoning = attack.poison is not None and config.f_real > 0
    return Traced(
        placement=not poisoning and config.topology is None,  # a graph's node update is static
        nesterov=True,
        attack=attack_moments(attack.name, attack.params) is not None,
    )


def varying(configs: list[Config]) -> Traced:
    """Which traceable choices differ among ``configs`` (the runs of one program)."""
    first = configs[0]
    if len(configs) == 1:
        return STATIC
    able = traceable(first)

    def differs(fields: tuple[str, ...]) -> bool:
        return any(any(getattr(c, f) != getattr(first, f) for f in fields) for c in configs)

    return Traced(
        placement=able.placement and differs(FIELDS["placement"]),
        nesterov=able.nesterov and differs(FIELDS["nesterov"]),
        attack=able.attack and differs(FIELDS["attack"]),
    )


def values(config: Config, attack: Attack) -> dict[str, Any]:
    """The traced structure values of ``config`` (``HyperParams.structure``): the placement's
    code (:data:`PLACEMENT_CODES`), Nesterov, and the moment coefficients ``a`` (``attack_std``)
    and ``b`` (``attack_mean``), zeros for an attack outside the family."""
    moments = attack_moments(attack.name, attack.params) or (0.0, 0.0)
    return {
        "placement": np.int32(PLACEMENT_CODES.get(config.momentum_at, 0)),
        "nesterov": np.bool_(config.momentum_nesterov),
        "attack_std": np.float32(moments[0]),
        "attack_mean": np.float32(moments[1]),
    }
