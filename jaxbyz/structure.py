"""Structure choices as traced data: runs that differ only in them share one compiled program.

Four choices of a run change no array shape, only which arithmetic a step does:

- the momentum placement (``update``, ``worker``, ``server``; El-Mhamdi, Guerraoui & Rouault,
  ICLR 2021, Section 3): one composition computes the three worker-side and server-side stages
  and keeps the chosen one's result and state (:func:`jaxbyz.momentum.compose_traced`);
- Nesterov: the gradients are taken at ``θ`` or at the look-ahead point, chosen by a flag;
- the attack within the *moment family*, the attacks whose Byzantine row is
  ``mu + a sigma + b mu`` (``mu``, ``sigma`` the coordinate-wise mean and unbiased standard
  deviation of the honest submissions) with fixed coefficients: ``little`` with a fixed factor
  ``x`` is ``a = s x, b = 0`` (Baruch et al., NeurIPS 2019), ``empire`` is ``a = 0, b = -s x``
  (Xie et al., UAI 2019), ``s = -1`` when ``negative``;
- any other attack on the submitted vectors, as a *switch*: the program holds each attack of its
  runs as a branch of ``lax.switch`` and a run's branch index selects one. The index is shared by
  the runs of a batch (a sweep batches each attack's runs apart): outside ``vmap``, it runs only
  the chosen branch, where a batched index would compute every branch for every run. A numeric
  ``factor`` stays a traced number of the run (``HyperParams.attack``), so runs that differ only
  in it share a branch and a batch.

A sweep groups runs whose configurations differ only in these (and in traced numbers, see
:class:`jaxbyz.config.HyperParams`) into one program; :class:`Traced` says which choices vary
within the group, and only those are traced (a group where every run has the same placement
compiles the dedicated program, which keeps no unused state). Their values travel in
``HyperParams.structure`` (:func:`values`), so ``vmap`` runs them side by side. Attacks that
differ only within the moment family take its coefficients (one batch); any other mix, the
switch.

Not traceable: the placement and the attack of data-poisoning attacks (their own workers compute
real gradients on poisoned data and run the placement's worker stage), and the attack of
federated rounds and graphs (their attackers are drawn per round or per node): those stay static
fields of the program.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
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
    attack: bool = False  # the moment family's coefficients
    switch: tuple[str, ...] = ()  # the branches of an attack switch (:func:`attack_spec` each)

    def __bool__(self) -> bool:
        return self.placement or self.nesterov or self.attack or bool(self.switch)

    def describe(self) -> str:
        """``"placement, nesterov"``: the traced choices, or ``"none"``."""
        names = [name for name in FIELDS if getattr(self, name)]
        if self.switch:
            names.append(f"attack (a switch of {len(self.switch)})")
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
    (all False for a configuration whose attack cannot be built: it fails on its own).
    ``switch`` is ``(attack_spec(config),)`` when its attack can be a branch of a switch."""
    from jaxbyz import attacks

    try:
        attack = attacks.get(config.attack, **config.attack_args)
    except (ValueError, TypeError):
        return STATIC
    poisoning = attack.poison is not None and config.f_real > 0
    synchronous = config.topology is None and not config.federated
    return Traced(
        placement=not poisoning and config.topology is None,  # a graph's node update is static
        nesterov=True,
        attack=attack_moments(attack.name, attack.params) is not None,
        # an attack with a memory carries its drift across steps: it runs in its own program
        switch=(attack_spec(config),)
        if synchronous and not poisoning and not attack.needs_drift
        else (),
    )


def varying(configs: list[Config]) -> Traced:
    """Which traceable choices differ among ``configs`` (the runs of one program). Attacks that
    all belong to the moment family are traced as its coefficients; other attacks that differ
    beyond a numeric ``factor``, as a switch over the distinct :func:`attack_spec`, in order of
    first appearance."""
    first = configs[0]
    if len(configs) == 1:
        return STATIC
    ables = [traceable(c) for c in configs]

    def differs(fields: tuple[str, ...]) -> bool:
        return any(any(getattr(c, f) != getattr(first, f) for f in fields) for c in configs)

    moment = differs(FIELDS["attack"]) and all(a.attack for a in ables)
    specs = tuple(dict.fromkeys(spec for a in ables for spec in a.switch))
    switchable = all(a.switch for a in ables) and len(specs) > 1
    return Traced(
        placement=ables[0].placement and differs(FIELDS["placement"]),
        nesterov=ables[0].nesterov and differs(FIELDS["nesterov"]),
        attack=moment,
        switch=specs if switchable and not moment else (),
    )


def attack_spec(config: Config) -> str:
    """The attack of ``config`` as one branch of a switch: its name and arguments as JSON, a
    fixed ``factor`` replaced by the mark ``"traced"`` (it is a traced number of the run,
    :func:`switch_factor`, so runs differing only in it share the branch)."""
    args = {k: "traced" if _numeric_factor(k, v) else v for k, v in config.attack_args.items()}
    return json.dumps({"attack": config.attack, "args": args}, sort_keys=True, default=str)


def switch_attacks(switch: tuple[str, ...]) -> list[tuple[Attack, bool]]:
    """The built attacks of a switch's branches (:func:`attack_spec` each), and whether each
    takes its ``factor`` from the run (``HyperParams.attack``; built with a placeholder 1)."""
    from jaxbyz import attacks

    built = []
    for spec in map(json.loads, switch):
        traced = spec["args"].get("factor") == "traced"
        args = {**spec["args"], "factor": 1.0} if traced else spec["args"]
        built.append((attacks.get(spec["attack"], **args), traced))
    return built


def switch_factor(config: Config) -> float:
    """The traced ``factor`` of ``config``'s run in a switch: its fixed factor, else 0 (unused:
    its branch has no traced factor, a searched one, ``"auto"`` or ``-K``, is part of it)."""
    value = config.attack_args.get("factor")
    return float(value) if _numeric_factor("factor", value) else 0.0


def _numeric_factor(name: str, value: Any) -> bool:
    """Whether ``name=value`` is a fixed factor (a negative integer ``-K`` is a search)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return name == "factor" and real and value >= 0


def values(config: Config, attack: Attack) -> dict[str, Any]:
    """The traced structure values of ``config`` (``HyperParams.structure``): the placement's
    code (:data:`PLACEMENT_CODES`), Nesterov, the moment coefficients ``a`` (``attack_std``) and
    ``b`` (``attack_mean``), zeros for an attack outside the family, and the branch of an attack
    switch (``attack_branch``: 0 here; the sweep sets it from its program's branches)."""
    moments = attack_moments(attack.name, attack.params) or (0.0, 0.0)
    return {
        "placement": np.int32(PLACEMENT_CODES.get(config.momentum_at, 0)),
        "nesterov": np.bool_(config.momentum_nesterov),
        "attack_std": np.float32(moments[0]),
        "attack_mean": np.float32(moments[1]),
        "attack_branch": np.int32(0),
    }
