"""Gradient aggregation rules (GARs): pure, jittable functions over the ``[n, d]`` worker axis.

``get(name, pre=None, **params)`` builds a :class:`Rule`; ``pre`` composes pre-aggregators
(``["nnm"]``, ``[("bucketing", {"s": 2}), "arc"]``, ...) in front of it. ``names()`` lists the
rules, ``pre_names()`` the pre-aggregators. Each family lives in its own module and registers
itself on import.

In the step (:mod:`jaxbyz.simulator`), the rule reads the ``n`` submissions (honest rows first,
then the Byzantine ones) through :func:`jaxbyz.transforms.robust_aggregate` and returns the
aggregate the server stage turns into the update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxbyz.aggregators import (  # noqa: F401  (imported so that they register)
    aksel_cge,
    average,
    brute,
    cclip,
    clustering,
    coordinatewise,
    dnc,
    fltrust,
    geomed,
    krum,
    mixture,
    monna,
    preaggregators,
    signguard,
    spectral,
)
from jaxbyz.aggregators.base import Rule
from jaxbyz.aggregators.mixture import from_gars, parse_gars
from jaxbyz.aggregators.registry import _REGISTRY

__all__ = ["Rule", "aliases", "from_gars", "get", "names", "parse_gars", "pre_names"]

PreSpec = str | tuple[str, dict[str, Any]]


def get(name: str, pre: PreSpec | Sequence[PreSpec] | None = None, **params: Any) -> Rule:
    """The rule ``name`` built with keyword ``params``, behind the pre-aggregators ``pre``.

    Unknown names raise ValueError listing the known ones; bad parameters raise ValueError
    naming the parameter, its value and the fix.
    """
    rule = _REGISTRY.get(name, **params)
    if not pre:
        return rule
    return preaggregators.compose(pre, rule)


def names() -> list[str]:
    """Canonical names of the registered aggregation rules."""
    return _REGISTRY.names()


def aliases() -> dict[str, str]:
    """Alias -> canonical rule name."""
    return _REGISTRY.aliases()


def pre_names() -> list[str]:
    """Canonical names of the registered pre-aggregators."""
    return preaggregators._PRE_REGISTRY.names()
